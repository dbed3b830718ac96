"""``python -m pipelines.synthetic``: the ``synthesize`` DVC stage."""

from pipelines.synthetic.stage import main

if __name__ == "__main__":
    main()
