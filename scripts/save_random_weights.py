"""Save a random-initialised foundation model in braindecode's save_pretrained layout.

`make demo-fm` runs where the Hugging Face Hub is unreachable: these weights stand in for the
published ones so that the whole path (contract check, strict offline load, probe) runs. On a
machine with internet, fetch the real ones instead:

    hf download braindecode/labram-pretrained --local-dir weights/labram

    python scripts/save_random_weights.py Labram demo/weights/labram --n-chans 19 --n-times 2000
"""

from __future__ import annotations

import argparse
import warnings

import torch


def main() -> None:
    from brainpipe.training.foundation import CONTRACTS
    from brainpipe.training.models import model_classes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=sorted(CONTRACTS))
    p.add_argument("out")
    p.add_argument("--n-chans", type=int, default=19)
    p.add_argument("--n-times", type=int, default=2000)
    p.add_argument("--small", action="store_true", help="the contract's tiny test sizes")
    args = p.parse_args()
    c = CONTRACTS[args.model]
    kw = dict(c.small) if args.small else {}
    torch.manual_seed(0)
    warnings.simplefilter("ignore")
    model = model_classes()[args.model](
        n_chans=args.n_chans, n_times=args.n_times, n_outputs=2, sfreq=c.sfreq, **kw
    )
    model.save_pretrained(args.out)
    print(f"saved a random-initialised {args.model} to {args.out}")


if __name__ == "__main__":
    main()
