"""Data: the IDX reader and its checks, where files are found, batches, normalisation, predict's images."""

import gzip
import math
import os
import shutil
import time

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageDraw

from conftest import g, invoke, make_config, write_dataset, write_idx
from ignite_mnist import data
from ignite_mnist.errors import UserError


def test_the_bundled_sample_is_6000_real_digits(sample):
    (train_images, train_labels), (test_images, test_labels) = sample["train"], sample["test"]
    assert train_images.shape == (5000, 28, 28) and train_images.dtype == torch.uint8
    assert test_images.shape == (1000, 28, 28) and test_labels.dtype == torch.int64
    assert torch.bincount(train_labels).tolist() == [500] * 10
    assert torch.equal(train_labels, train_labels.sort().values)  # sorted by class, as its README says
    assert test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the start of MNIST's t10k


def test_gz_and_plain_idx_files_read_the_same(tmp_path, sample):
    images, labels = sample["test"]
    write_idx(tmp_path / "a.gz", images.numpy())
    write_idx(tmp_path / "a", images.numpy())
    write_idx(tmp_path / "l", labels.numpy())
    assert np.array_equal(data.read_idx(tmp_path / "a.gz"), data.read_idx(tmp_path / "a"))
    got_images, got_labels = data.read_split(tmp_path / "a", tmp_path / "l")
    assert torch.equal(got_images, images) and torch.equal(got_labels, labels)


def test_a_large_gz_file_is_decoded_once_and_read_from_the_cache_after(tmp_path, sample, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "CACHE_FROM_BYTES", 0)  # the sample is below the threshold: cache anything
    images = sample["test"][0].numpy()
    path = tmp_path / "images.gz"
    write_idx(path, images)
    assert np.array_equal(data.read_idx(path), images)
    cached = data.decoded_cache(path)
    assert cached.parent == tmp_path / "cache" / "ignite-mnist" and [p.name for p in cached.parent.iterdir()] == [cached.name]

    def no_decoding(path):
        raise AssertionError("decoded again")

    with monkeypatch.context() as m:
        m.setattr(data, "_decode_idx", no_decoding)
        got = data.read_idx(path)
        assert np.array_equal(got, images) and got.flags.writeable  # no copy needed to make a tensor of it

    # a copy in another folder shares the array: not decoded again, nothing more cached
    (tmp_path / "copy").mkdir()
    shutil.copy(path, tmp_path / "copy" / "images.gz")
    with monkeypatch.context() as m:
        m.setattr(data, "_decode_idx", no_decoding)
        assert np.array_equal(data.read_idx(tmp_path / "copy" / "images.gz"), images)
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]

    # the file changes, with the same size and modification time (`cp -p`, `rsync -a`): decoded anew, by
    # its gzip trailer (CRC-32); an array unused for CACHE_UNUSED_DAYS goes when another is written
    stat = path.stat()
    month_ago = time.time() - (data.CACHE_UNUSED_DAYS + 1) * 86400
    other = tmp_path / "labels.gz"  # another file's array, read now and then: it stays
    write_idx(other, sample["test"][1].numpy())
    assert np.array_equal(data.read_idx(other), sample["test"][1].numpy())
    for version in (images, images[::-1]):
        header = b"".join(int(v).to_bytes(4, "big") for v in (2051, *version.shape))
        path.write_bytes(gzip.compress(header + version.tobytes(), compresslevel=0))  # stored: same size
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        for array in cached.parent.glob("*.npy"):
            os.utime(array, (month_ago, month_ago))
        assert np.array_equal(data.read_idx(other), sample["test"][1].numpy())  # read: recent again
        assert data.decoded_cache(other).stat().st_mtime > month_ago + 86400
        assert np.array_equal(data.read_idx(path), version)
    assert sorted(p.name for p in cached.parent.iterdir()) == sorted([data.decoded_cache(path).name,
                                                                      data.decoded_cache(other).name])
    assert cached.name not in [p.name for p in cached.parent.iterdir()]  # the unused version's went

    # damaged in place, its size, time and trailer kept: decoded anew, and found corrupt
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(UserError, match="is truncated or corrupt"):
        data.read_idx(path)


@pytest.mark.parametrize("content", [b"", b"garbage", "floats", "wrong-shape", "fortran", "fewer", "huge"])
def test_a_corrupt_or_foreign_cache_file_is_decoded_again_and_replaced(tmp_path, sample, monkeypatch, content):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "CACHE_FROM_BYTES", 0)
    images = sample["test"][0][:50].numpy()
    path = tmp_path / "images.gz"
    write_idx(path, images)
    cached = data.decoded_cache(path)
    cached.parent.mkdir(parents=True)
    if content == "floats":
        np.save(cached, images.astype(np.float32))
    elif content == "wrong-shape":
        np.save(cached, images.reshape(50, 784))
    elif content == "fortran":
        np.save(cached, np.asfortranarray(images))
    elif content == "fewer":  # a whole array, but not the file's: its trailer says 50 images
        np.save(cached, images[:49])
    elif content == "huge":  # a header that announces 730 GiB: refused before reading
        with open(cached, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 28)})
            f.write(bytes(100))
    else:
        cached.write_bytes(content)
    assert np.array_equal(data.read_idx(path), images)
    assert np.array_equal(np.load(cached), images)


def test_an_unwritable_cache_is_skipped_and_small_files_are_not_cached(tmp_path, sample, monkeypatch):
    images = sample["test"][0][:50].numpy()
    path = tmp_path / "images.gz"
    write_idx(path, images)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.decoded_cache(path) is None and np.array_equal(data.read_idx(path), images)  # 40 KB: not cached
    assert not (tmp_path / "cache").exists()

    monkeypatch.setattr(data, "CACHE_FROM_BYTES", 0)
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    assert np.array_equal(data.read_idx(path), images)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data.decoded_cache(path).mkdir(parents=True)  # a folder where the array would go: the rename fails
    assert np.array_equal(data.read_idx(path), images)
    assert [p.name for p in (tmp_path / "cache" / "ignite-mnist").iterdir()] == [data.decoded_cache(path).name]
    with pytest.raises(UserError, match="is truncated or corrupt"):  # a bad file is still named, cache or not
        (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + bytes(100))[:-20])
        data.read_idx(tmp_path / "bad.gz")


def _bad_files(folder, images, labels):
    """name -> (images path, labels path, expected message)."""
    good_images, good_labels = folder / "good-images", folder / "good-labels"
    write_idx(good_images, images)
    write_idx(good_labels, labels)
    raw = good_images.read_bytes()
    cases = {}

    def case(name, content=None, which="images", expected=""):
        path = folder / name
        path.write_bytes(content)
        cases[name] = (path, good_labels, expected) if which == "images" else (good_images, path, expected)

    case("magic", b"\x00\x00\x08\x04" + raw[4:], expected="is not an MNIST IDX file (magic number 2052")
    case("truncated", raw[:-100], expected="is truncated or corrupt: its header announces 50 items")
    case("extra-bytes", raw + b"\x00" * 5, expected="is truncated or corrupt")
    case("count", raw[:4] + (49).to_bytes(4, "big") + raw[8:], expected="announces 49 items")
    case("empty", b"", expected="is not an MNIST IDX file (magic number None")
    case("size", raw[:8] + (14).to_bytes(4, "big") + (56).to_bytes(4, "big") + raw[16:], expected="holds 14x56 images")
    case("gz-truncated.gz", gzip.compress(raw)[:-20], expected="is truncated or corrupt (")
    case("gz-garbage.gz", b"\x1f\x8b" + bytes(range(200)), expected="is truncated or corrupt (")
    bad_labels = labels.copy()
    bad_labels[7] = 12
    write_idx(folder / "label-range", bad_labels)
    cases["label-range"] = (good_images, folder / "label-range", "label 12 at index 7 is out of range 0-9")
    write_idx(folder / "label-count", labels[:40])
    cases["label-count"] = (good_images, folder / "label-count", "holds 50 images but")
    cases["swapped"] = (good_labels, good_images, "holds labels, not images")
    return cases


def test_malformed_idx_files_are_named_in_one_line(tmp_path, sample):
    images, labels = sample["test"][0][:50].numpy(), sample["test"][1][:50].numpy()
    for name, (images_path, labels_path, expected) in _bad_files(tmp_path, images, labels).items():
        with pytest.raises(UserError) as e:
            data.read_split(images_path, labels_path)
        assert expected in str(e.value), name
        assert "\n" not in str(e.value)


def test_files_are_found_in_torchvision_layout_or_flat(tmp_path, tiny_data):
    flat = data.locate("mnist", tiny_data)
    assert flat["train"][0] == tiny_data / "train-images-idx3-ubyte.gz"
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in tiny_data.iterdir():  # torchvision keeps them uncompressed
        (raw / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
    found = data.locate("mnist", tmp_path)
    assert found["test"] == (raw / "t10k-images-idx3-ubyte", raw / "t10k-labels-idx1-ubyte")
    assert torch.equal(data.load("mnist", tmp_path)["train"][0], data.load("mnist", tiny_data)["train"][0])
    shutil.copytree(tiny_data, tmp_path / "fashion")
    assert data.locate("fashion-mnist", tmp_path / "fashion")["train"][1].name == "train-labels-idx1-ubyte.gz"


def test_offline_without_files_says_what_to_put_where(tmp_path, monkeypatch):
    # a mirror that refuses at once: the same path as a machine without network, whatever this one has
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(UserError) as e:
        data.locate("mnist", tmp_path / "data")
    message = str(e.value)
    assert "mnist is not in" in message and "could not be downloaded" in message
    assert "train-images-idx3-ubyte(.gz)" in message and str(tmp_path / "data" / "MNIST" / "raw") in message
    assert "'mnist-sample'" not in message and "\n" not in message  # (init's advice: an experiment's dataset is set)


def test_init_refuses_offline_without_data_and_creates_nothing(workdir, capsys, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    code, _, err = invoke(capsys, *g(workdir, data=workdir / "no-data"), "init", "--config-path", make_config(workdir))
    assert code == 2 and "could not be downloaded" in err and err.count("\n") == 1
    assert err.strip().endswith("; or `init` an experiment of the dataset 'mnist-sample' (data.dataset in the config), "
                                "which is bundled and works offline"), err
    assert not (workdir / "experiments" / "exp").exists()


def test_normalised_batches_equal_torchvision_totensor_and_normalize(sample):
    images, labels = sample["test"]
    tensors = data.TensorSet(images, labels, 0.1307, 0.3081)
    index = torch.tensor([5, 0, 999, 3])
    x, y = tensors.batch(index)
    transform = torchvision.transforms.Compose([torchvision.transforms.ToTensor(),
                                                torchvision.transforms.Normalize((0.1307,), (0.3081,))])
    expected = torch.stack([transform(Image.fromarray(images[i].numpy())) for i in index])
    assert x.dtype == torch.float32 and x.shape == (4, 1, 28, 28)
    assert torch.equal(x, expected)
    assert torch.equal(y, labels[index])


@pytest.mark.parametrize("n, batch_size, world_size", [(320, 32, 1), (100, 64, 1), (101, 32, 2), (7, 4, 3)])
def test_training_batches_cover_every_index_once_per_epoch(n, batch_size, world_size):
    ranks = [data.ShuffledBatches(n, batch_size, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
    orders = []
    for epoch in (1, 2):
        per_rank = []
        for batches in ranks:
            batches.set_epoch(epoch)
            chunks = list(batches)
            assert len(chunks) == len(batches)
            assert all(len(c) <= batch_size // world_size for c in chunks)
            per_rank.append(torch.cat(chunks))
        assert len({len(list(b)) for b in ranks}) == 1, "every rank runs the same number of steps"
        everything = torch.cat(per_rank)
        assert set(everything.tolist()) == set(range(n))
        assert len(everything) - n == math.ceil(n / world_size) * world_size - n  # only the padding repeats
        orders.append(everything)
    assert not torch.equal(orders[0], orders[1]), "a new order every epoch"
    again = data.ShuffledBatches(n, batch_size, seed=5, rank=0, world_size=world_size)
    again.set_epoch(2)
    assert torch.equal(torch.cat(list(again)), torch.cat(list(ranks[0]))), "the order is a function of (seed, epoch)"


def test_the_epoch_order_is_drawn_when_the_epoch_starts_not_when_iterated():
    batches = data.ShuffledBatches(50, 10, seed=1)
    iterator = iter(batches)  # as Ignite creates it before EPOCH_STARTED
    batches.set_epoch(3)
    third = data.ShuffledBatches(50, 10, seed=1)
    third.set_epoch(3)
    assert torch.equal(torch.cat(list(iterator)), torch.cat(list(third)))


@pytest.mark.parametrize("n, batch_size, world_size", [(100, 64, 1), (1000, 256, 2), (5, 2, 3), (80, 7, 4)])
def test_evaluation_batches_count_every_item_once(n, batch_size, world_size):
    covered = []
    for rank in range(world_size):
        for s in data.eval_batches(n, batch_size, rank, world_size):
            assert s.stop - s.start <= batch_size
            covered.extend(range(s.start, s.stop))
    assert covered == list(range(n))


def test_a_28x28_digit_is_used_as_it_is(tmp_path, sample):
    digit = sample["test"][0][0]
    Image.fromarray(digit.numpy()).save(tmp_path / "d.png")
    assert torch.equal(data.image_as_digit(tmp_path / "d.png"), digit)
    Image.fromarray(255 - digit.numpy()).save(tmp_path / "inverted.png")  # dark on light: turned around
    assert torch.equal(data.image_as_digit(tmp_path / "inverted.png"), digit)
    Image.fromarray(digit.numpy()).convert("RGB").save(tmp_path / "d.jpg", quality=100)
    assert (data.image_as_digit(tmp_path / "d.jpg").int() - digit.int()).abs().max() < 40


def test_a_large_photo_like_image_is_centred_like_mnist(tmp_path):
    image = Image.new("RGB", (300, 400), "white")
    ImageDraw.Draw(image).rectangle([200, 40, 230, 200], fill="black")  # a "1", off-centre, dark on light
    image.save(tmp_path / "one.jpg")
    digit = data.image_as_digit(tmp_path / "one.jpg").float()
    assert digit.shape == (28, 28) and digit[0].sum() == 0 and digit[:, 0].sum() == 0
    rows, cols = torch.nonzero(digit > 128, as_tuple=True)
    assert rows.max() - rows.min() + 1 in (19, 20, 21)  # the ink fits 20x20, as in MNIST
    mass = digit.sum()
    centre = ((digit.sum(1) * torch.arange(28)).sum() / mass, (digit.sum(0) * torch.arange(28)).sum() / mass)
    assert all(abs(c - 14) < 1.5 for c in centre)


@pytest.mark.parametrize("content, expected", [(b"", "is not an image file"), (b"hello", "is not an image file"),
                                               (None, "is a directory"), ("missing", "does not exist")])
def test_bad_image_files(tmp_path, content, expected):
    path = tmp_path / "x.png"
    if content is None:
        path.mkdir()
    elif content != "missing":
        path.write_bytes(content)
    with pytest.raises(UserError, match=expected):
        data.image_as_digit(path)


def test_a_different_dataset_than_the_split_was_drawn_from_is_refused(workdir, tiny_data, capsys, sample):
    opts = g(workdir, data=tiny_data)
    assert invoke(capsys, *opts, "init", "--config-path", make_config(workdir))[0] == 0
    smaller = write_dataset(workdir / "smaller", (sample["train"][0][:100], sample["train"][1][:100]),
                            (sample["test"][0][:10], sample["test"][1][:10]))
    code, _, err = invoke(capsys, "-e", "exp", "--experiments-path", workdir / "experiments", "--data-path", smaller,
                          "train", "--max-epochs", "1", "--device", "cpu")
    assert code == 2 and "has 100: use the data the experiment was created with" in err
    assert not (workdir / "experiments" / "exp" / "checkpoints").exists() or \
        not list((workdir / "experiments" / "exp" / "checkpoints").iterdir())


def test_light_things_filling_a_dark_image_are_not_turned_around(tmp_path, sample):
    garment = np.zeros((28, 28), np.uint8)
    garment[2:27, 4:24] = 200  # a light coat filling most of a dark image, as in Fashion-MNIST
    Image.fromarray(garment).save(tmp_path / "coat.png")  # (a Fashion-MNIST release's: not placed as a digit)
    assert torch.equal(data.image_as_digit(tmp_path / "coat.png", digits=False), torch.from_numpy(garment))
    Image.fromarray(255 - garment).save(tmp_path / "inverted.png")  # a dark coat on white paper: turned around
    assert torch.equal(data.image_as_digit(tmp_path / "inverted.png", digits=False), torch.from_numpy(garment))
    for digit in sample["test"][0][:100]:  # MNIST's own digits stay as they are
        Image.fromarray(digit.numpy()).save(tmp_path / "d.png")
        assert torch.equal(data.image_as_digit(tmp_path / "d.png"), digit)


def test_a_garment_of_another_size_is_fitted_as_fashion_mnist_made_its_images(tmp_path):
    garment = np.zeros((28, 28), np.uint8)
    garment[0:28, 6:22] = 180  # a dress: as tall as the frame, as Fashion-MNIST's longer side always is
    garment[3:25, 9:19] = 240
    Image.fromarray(garment).resize((84, 84), Image.Resampling.NEAREST).save(tmp_path / "dress84.png")
    fitted = data.image_as_digit(tmp_path / "dress84.png", digits=False).int()
    assert (fitted - torch.from_numpy(garment).int()).abs().float().mean() < 3  # not shrunk into 20x20 as a digit
    photo = np.full((120, 90), 255, np.uint8)  # a smaller dark garment off-centre on a white page
    photo[10:70, 5:35] = 40
    Image.fromarray(photo).save(tmp_path / "photo.png")
    rows, cols = np.nonzero(data.image_as_digit(tmp_path / "photo.png", digits=False).numpy() > 100)
    assert (rows.min(), rows.max()) == (0, 27) and abs((cols.min() + cols.max()) / 2 - 13.5) <= 1
    assert cols.max() - cols.min() + 1 == 14  # 30x60 scaled to 14x28, centred


def test_images_of_more_than_eight_bits_are_scaled_not_clipped(tmp_path, sample):
    digit = sample["test"][0][0]
    wide = digit.numpy().astype(np.uint16) * 257  # 16-bit: 0-65535
    Image.fromarray(wide).save(tmp_path / "d16.png")
    assert Image.open(tmp_path / "d16.png").mode == "I;16"
    assert torch.equal(data.image_as_digit(tmp_path / "d16.png"), digit)
    Image.fromarray(digit.numpy().astype(np.float32) / 255).save(tmp_path / "float.tiff")  # floats in 0-1
    assert (data.image_as_digit(tmp_path / "float.tiff").int() - digit.int()).abs().max() <= 1
    Image.fromarray(digit.numpy().astype(np.int32) * 1000 - 5000).save(tmp_path / "int32.tiff")  # any other range
    assert (data.image_as_digit(tmp_path / "int32.tiff").int() - digit.int()).abs().max() <= 1
    Image.fromarray(digit.numpy().astype(np.int32)).save(tmp_path / "int32-8bit.tiff")  # 32-bit ints holding 0-255
    assert torch.equal(data.image_as_digit(tmp_path / "int32-8bit.tiff"), digit)
    Image.fromarray(digit.numpy().astype(np.uint16)).save(tmp_path / "d16-8bit.png")  # 16-bit holding 0-255
    assert torch.equal(data.image_as_digit(tmp_path / "d16-8bit.png"), digit)
    Image.fromarray(digit.numpy().astype(np.uint16) * 16).save(tmp_path / "d12.png")  # 12-bit: 0-4095
    assert (data.image_as_digit(tmp_path / "d12.png").int() - digit.int()).abs().max() <= 1
    big = np.kron(wide, np.ones((80, 80), np.uint16))  # 2240x2240: shrunk as 16 bits, then scaled
    Image.fromarray(big).save(tmp_path / "big16.png")
    Image.fromarray((big // 257).astype(np.uint8)).save(tmp_path / "big8.png")  # its 8-bit twin
    assert Image.open(tmp_path / "big16.png").mode == "I;16"
    from_16_bits = data.image_as_digit(tmp_path / "big16.png")
    from_8_bits = data.image_as_digit(tmp_path / "big8.png")
    assert from_16_bits.max() == 255 and (from_16_bits.int() - from_8_bits.int()).abs().max() <= 4
    broken = digit.numpy().astype(np.float32) / 255
    broken[0, 0] = np.nan
    Image.fromarray(broken).save(tmp_path / "nan.tiff")
    with pytest.raises(UserError, match="holds pixel values that are not numbers"):
        data.image_as_digit(tmp_path / "nan.tiff")


def test_a_28x28_digit_placed_otherwise_than_mnist_s_is_prepared_as_any_other_size(tmp_path, sample):
    """A digit drawn small in a corner of a 28x28 canvas: centred and sized as MNIST's, as the same drawing on a
    29x29 canvas is (it had been taken as it was, and misread); MNIST's own 28x28 digits stay exactly as they are."""
    for digit in sample["test"][0][:20]:
        small = np.asarray(Image.fromarray(digit.numpy()).resize((14, 14), Image.Resampling.LANCZOS))
        for side in (28, 29):
            canvas = np.zeros((side, side), np.uint8)
            canvas[1:15, 1:15] = small
            Image.fromarray(canvas).save(tmp_path / f"corner{side}.png")
        placed = data.image_as_digit(tmp_path / "corner28.png")
        assert torch.equal(placed, data.image_as_digit(tmp_path / "corner29.png"))
        assert data._placed_like_mnist(placed.numpy().astype(np.float32))
        Image.fromarray(digit.numpy()).save(tmp_path / "d.png")
        assert torch.equal(data.image_as_digit(tmp_path / "d.png"), digit)
    assert not data._placed_like_mnist(np.pad(small, ((1, 13), (1, 13))).astype(np.float32))


@pytest.mark.parametrize("kind", ["faint", "grey background", "pencil on paper"])
def test_a_low_contrast_digit_is_stretched_to_mnist_s_range(tmp_path, sample, kind):
    """Strokes that are faint, on grey, or pencil on paper: the background to 0, the strokes to 255, as MNIST's
    ink (they had been read at 15-20% confidence, or wrongly); a Fashion-MNIST release's images are left so."""
    digit = sample["test"][0][3].numpy().astype(np.float32)
    image = {"faint": digit * 40 / 255, "grey background": 100 + digit * 40 / 255,
             "pencil on paper": 230 - digit * 80 / 255}[kind]
    Image.fromarray(image.round().astype(np.uint8)).save(tmp_path / "low.png")
    prepared = data.image_as_digit(tmp_path / "low.png").int()
    assert prepared.max() == 255 and prepared[0].max() == 0
    assert (prepared - torch.from_numpy(digit).int()).abs().max() <= 255 / 40 + 1  # the digit, to rounding
    if kind == "faint":
        assert data.image_as_digit(tmp_path / "low.png", digits=False).max() <= 40
