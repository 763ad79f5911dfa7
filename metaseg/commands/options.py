"""--device, --precision and --cam-prompts, defined once for the commands that run a network (adapt, evaluate)."""
from __future__ import annotations

import argparse

from metaseg.jobs.methods import DEVICES


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="auto (default: cuda when available, else cpu), cpu or cuda")


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed"],
                        help="fp32 (default) or bf16-mixed: convs and matmuls in bfloat16 under autocast, parameters, "
                             "inner-loop updates and losses in float32 (CPU and CUDA; docs/speed.md)")


def add_cam_prompts_option(parser: argparse.ArgumentParser) -> None:
    """--cam-prompts of adapt / evaluate: SAM-Mix's CAM as the box-prompt source of a SAM-based model."""
    parser.add_argument("--cam-prompts", metavar="FILE",
                        help="take the box prompt of a SAM-based model (medsam_lite / sam checkpoint, --method medsam_lite_*) "
                             "from SAM-Mix's trained presence + CAM head: the cam_prompter.pt `metaseg adapt --method sam_mix` "
                             "writes (default: LiteMedSAM's whole-image box, SAM's prompt-free first pass)")
