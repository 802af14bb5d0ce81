from ignite_mnist.cli import main

# The guard matters: processes spawned for distributed training re-import this module.
if __name__ == "__main__":
    main()
