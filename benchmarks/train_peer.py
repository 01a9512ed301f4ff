#!/usr/bin/env python
"""train_net.py with the learning benchmark's peer registered (benchmarks/panoptic_fpn_peer.py).

python benchmarks/train_peer.py --config-file benchmarks/configs/panoptic_fpn_R_50_demo.yaml
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import panoptic_fpn_peer  # noqa: E402,F401  (registers PanopticFPNPeer)

import train_net  # noqa: E402

if __name__ == "__main__":
    train_net.run(train_net.parse_args())
