"""Config keys added by efficientps on top of detectron2's defaults.

Every new key is commented; new subtrees are ``CN()`` nodes. Defaults follow the paper
(Mohan & Valada, IJCV 2021); where the authors' code differs, the key says how to get it.
"""

from detectron2.config import CfgNode as CN


def add_efficientps_config(cfg):
    """Add efficientps' keys to a detectron2 config (in place). Safe to call twice."""
    if "EFFICIENTNET" in cfg.MODEL:
        return cfg
    _add_backbone_config(cfg)
    _add_head_config(cfg)
    _add_model_config(cfg)
    _add_input_config(cfg)
    _add_numerics_config(cfg)
    return cfg


def _add_backbone_config(cfg):
    cfg.MODEL.EFFICIENTNET = CN()
    # "efficientnet-b0" .. "efficientnet-b7" (efficientnet-pytorch's names).
    cfg.MODEL.EFFICIENTNET.NAME = "efficientnet-b5"
    # Squeeze-and-excitation blocks; the paper removes them (they hurt localisation).
    cfg.MODEL.EFFICIENTNET.SE = False
    # Norm after every conv: "BN", "SyncBN", "naiveSyncBN", "GN", "FrozenBN". The paper's iABN is
    # (Sync)BN followed by the activation below, computed in place.
    cfg.MODEL.EFFICIENTNET.NORM = "BN"
    # "leaky_relu" (slope 0.01, as the paper's iABN) or "swish" (EfficientNet's original).
    cfg.MODEL.EFFICIENTNET.ACTIVATION = "leaky_relu"
    # Taps at strides 4, 8, 16, 32; res5 is the final 1x1 head conv (2048 ch for b5).
    cfg.MODEL.EFFICIENTNET.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Freeze the stem (1) and the first k-1 stages (k = 2..5, as ResNet's FREEZE_AT); 0 = none.
    cfg.MODEL.EFFICIENTNET.FREEZE_AT = 0
    # Removed (must stay ""): ImageNet weights are converted once by
    # tools/convert_imagenet_checkpoint.py and given as MODEL.WEIGHTS. Kept so that an old
    # config that sets it gets that message instead of "non-existent config key".
    cfg.MODEL.EFFICIENTNET.WEIGHTS = ""
    # Drop-connect (stochastic depth) rate of the MBConv blocks; efficientnet-pytorch's default.
    cfg.MODEL.EFFICIENTNET.DROP_CONNECT_RATE = 0.2
    # Activation checkpointing of every MBConv block in training: only block inputs are kept
    # for backward, the blocks run again during backward (less memory for more time; the same
    # gradients and BN statistics).
    cfg.MODEL.EFFICIENTNET.ACTIVATION_CHECKPOINTING = False
    # Activation after the 1x1 projection of the blocks without expansion (first stage). The
    # paper's (and EfficientNet's) projections are linear; the authors' code activates these
    # (True: what their released weights were trained with).
    cfg.MODEL.EFFICIENTNET.DS_PROJECT_ACTIVATION = False
    # Running-statistics momentum of the backbone's norms (PyTorch convention): EfficientNet's
    # TF value 0.01; the authors' EfficientNet port leaves their iABN at 0.1 (the paper is silent).
    cfg.MODEL.EFFICIENTNET.NORM_MOMENTUM = 0.01
    # The norms' epsilon and the convs' padding must be those the ImageNet weights were trained
    # with: TF-trained weights (efficientnet-pytorch's, timm's tf_efficientnet_b*, the authors'
    # init) use eps 1e-3 and TensorFlow's "same" padding; timm's efficientnet_b* (trained in
    # PyTorch) use eps 1e-5 and "symmetric" padding. tools/convert_imagenet_checkpoint.py says
    # which a file needs.
    cfg.MODEL.EFFICIENTNET.NORM_EPS = 1e-3
    cfg.MODEL.EFFICIENTNET.PADDING = "same"

    cfg.MODEL.TWO_WAY_FPN = CN()
    cfg.MODEL.TWO_WAY_FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.TWO_WAY_FPN.OUT_CHANNELS = 256
    # Norm of the lateral and output convs (the paper: iABN = norm + activation).
    cfg.MODEL.TWO_WAY_FPN.NORM = "BN"
    # Activation of the lateral and output convs: "leaky_relu" or "swish" or "relu".
    cfg.MODEL.TWO_WAY_FPN.ACTIVATION = "leaky_relu"
    # 3x3 output convs depthwise-separable (paper) or regular (the authors' code: False).
    cfg.MODEL.TWO_WAY_FPN.SEPARABLE = True
    # "" (the paper: p2..p5 only) or "maxpool" (adds p6 for stock RPN configs that expect it).
    cfg.MODEL.TWO_WAY_FPN.TOP_BLOCK = ""
    # Activation checkpointing of the two paths and output convs in training (as the
    # backbone's key: less memory, more time, the same gradients and BN statistics).
    cfg.MODEL.TWO_WAY_FPN.ACTIVATION_CHECKPOINTING = False


def _add_head_config(cfg):
    # Semantic head: detectron2's MODEL.SEM_SEG_HEAD keys are reused (NUM_CLASSES, IGNORE_VALUE,
    # NORM, LOSS_WEIGHT, IN_FEATURES, CONVS_DIM); these are the EfficientPS additions.
    cfg.MODEL.SEM_SEG_HEAD.ACTIVATION = "leaky_relu"
    # (row, col) dilations of the five DPC branches; branch 4 takes branch 3's output.
    cfg.MODEL.SEM_SEG_HEAD.DPC_DILATIONS = [[1, 6], [1, 1], [6, 21], [18, 15], [6, 3]]
    # Fraction of the hardest pixels (of all W*H, ignored ones with loss 0) whose cross entropy
    # is averaged; 1.0 = every pixel.
    cfg.MODEL.SEM_SEG_HEAD.HARD_PIXEL_FRACTION = 0.25
    # Where the hardest pixels are ranked: "image" (the paper's per-image weights) or "batch"
    # (the authors' code: all pixels of the batch together).
    cfg.MODEL.SEM_SEG_HEAD.HARD_PIXEL_RANKING = "image"
    # Activation checkpointing of the head's layers (up to the 1/4 logits) in training.
    cfg.MODEL.SEM_SEG_HEAD.ACTIVATION_CHECKPOINTING = False

    # RPN head: 3x3 conv separable (False matches the paper's parameter count), optional norm.
    cfg.MODEL.RPN.SEPARABLE = False
    cfg.MODEL.RPN.NORM = ""
    cfg.MODEL.RPN.ACTIVATION = "leaky_relu"

    # ROIAlign of the ROI heads through one embedding_bag on CPU (same numbers as torchvision's
    # kernel, ~7x faster backward); torchvision's kernel on GPU either way.
    cfg.MODEL.ROI_HEADS.FAST_CPU_ROI_ALIGN = True

    # Box head: norm and activation after each FC ("" = no norm).
    cfg.MODEL.ROI_BOX_HEAD.ACTIVATION = "leaky_relu"

    # Mask head: 3x3 convs separable (paper and authors' code), activation after norm.
    cfg.MODEL.ROI_MASK_HEAD.SEPARABLE = True
    cfg.MODEL.ROI_MASK_HEAD.ACTIVATION = "leaky_relu"
    # Activation after the 2x2 deconv: "" = ACTIVATION above (paper); the authors' code: "relu".
    cfg.MODEL.ROI_MASK_HEAD.DECONV_ACTIVATION = ""


def _add_model_config(cfg):
    cfg.MODEL.EFFICIENTPS = CN()
    # Panoptic fusion: "paper" (Sec. 3.5, no parameters) or "learned" (the paper's, with a
    # trained detection quality in place of the box score: modeling/meta_arch/learned_fusion.py).
    cfg.MODEL.EFFICIENTPS.FUSION = "paper"
    # Instances kept for fusion need this confidence (box score, or the learned quality).
    cfg.MODEL.EFFICIENTPS.FUSION_SCORE_THRESH = 0.5
    # An instance whose mask is more than this fraction covered by earlier instances is dropped.
    cfg.MODEL.EFFICIENTPS.FUSION_OVERLAP_THRESH = 0.5
    # Stuff segments smaller than this many pixels become void, given at 1024x2048 and scaled
    # with the output area.
    cfg.MODEL.EFFICIENTPS.FUSION_STUFF_AREA = 2048
    cfg.MODEL.EFFICIENTPS.FUSION_STUFF_AREA_REFERENCE = [1024, 2048]
    # The authors' code multiplies mask logits by 4 before fusing; the paper does not (1.0).
    cfg.MODEL.EFFICIENTPS.FUSION_MASK_LOGIT_SCALE = 1.0
    # Which pixels an instance's fused logits compete for: "argmax" (the paper: argmax over
    # [stuff logits, FL of every kept instance] wherever its pasted mask logits are non-zero)
    # or "owner" (only the pixels its mask took in the overlap filter) or "authors" (their code:
    # FL = 0 where the paste is 0, so the first instance takes pixels whose stuff logits are all
    # negative; ML_B read in their box window).
    cfg.MODEL.EFFICIENTPS.FUSION_PIXEL_RULE = "argmax"
    # The learned fusion ranks detections down to this box score: the detector runs at the lower
    # of it and ROI_HEADS.SCORE_THRESH_TEST, and the model's "instances" output keeps
    # SCORE_THRESH_TEST (so that AP is the paper fusion's).
    cfg.MODEL.EFFICIENTPS.FUSION_CANDIDATE_THRESH = 0.05
    # Loss weight of the learned fusion's detection quality (its inputs are detached: the
    # weight scales its own learning rate only).
    cfg.MODEL.EFFICIENTPS.FUSION_LOSS_WEIGHT = 1.0
    # Semantic channels of the stuff classes and of thing index 0..T-1. Empty: read from the
    # metadata of the first dataset in DATASETS.TRAIN (or TEST).
    cfg.MODEL.EFFICIENTPS.STUFF_CHANNELS = []
    cfg.MODEL.EFFICIENTPS.THING_CHANNELS = []
    # In-place activated BN (the paper's iABN): every conv's BN + LeakyReLU keeps only its output
    # for backward (same function, parameters and checkpoints; less training memory). BN,
    # SyncBN and naiveSyncBN norms become iABN / iABN-sync.
    cfg.MODEL.EFFICIENTPS.INPLACE_ABN = True
    # Inference (eval mode, autograd off, as DefaultPredictor and evaluation run it): every conv
    # + BatchNorm runs as one conv with folded weights, cached beside the parameters (which
    # stay as trained: state_dict, checkpoints and train() are unaffected). False: plain path.
    cfg.MODEL.EFFICIENTPS.INFERENCE_FOLD_BN = True
    # Device types whose inference runs in channels_last layout (2x faster on CPU, measured);
    # add "cuda" to try it on GPUs (not measured here).
    cfg.MODEL.EFFICIENTPS.INFERENCE_CHANNELS_LAST_DEVICES = ["cpu"]
    # "float32", or "bfloat16" / "float16": backbone and heads under torch.autocast at
    # inference (bf16 for CPUs with AMX/AVX-512 and GPUs; the fusion stays float32).
    cfg.MODEL.EFFICIENTPS.INFERENCE_DTYPE = "float32"


def _add_input_config(cfg):
    # Random scale of the training image (and its maps) before cropping (paper: 0.5 .. 2.0).
    cfg.INPUT.SCALE_RANGE = [0.5, 2.0]
    # Crowd regions ("car group") in the semantic targets: their class (the authors' targets;
    # the paper does not say) or, False, the ignore label. Never instances either way.
    cfg.INPUT.CROWD_IN_SEMANTIC = True


def _add_numerics_config(cfg):
    # float32 on NVIDIA GPUs (efficientps.engine.numerics), applied in every process of a run.
    cfg.NUMERICS = CN()
    # TF32 for cuDNN convolutions (torch's default: on; fp32 results ~1e-3 from a CPU's).
    cfg.NUMERICS.TF32_CONVOLUTIONS = True
    # TF32 for matrix products (torch's default: off).
    cfg.NUMERICS.TF32_MATMUL = False
    # Deterministic algorithms where torch has them (TF32 off, no cuDNN benchmark); the
    # operations without one warn. Bit-reproducible on a CPU, not fully on CUDA (README).
    cfg.NUMERICS.DETERMINISTIC = False
