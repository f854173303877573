"""LVIS's Mask R-CNN with sigmoid cross-entropy and the federated loss (FED_LOSS_NUM_CLASSES 3 of the 3 classes plus
background: negative classes are drawn whenever the batch's labels are fewer), against Detectron2: sigmoid scores
in inference, and the federated classification loss in training (the class weights come from the checkpoint)."""

from harness import Case, case_tests

# The box predictor reads the class frequencies of DATASETS.TRAIN when it is built (then the checkpoint replaces
# them); a three-class stand-in for LVIS's metadata, in both libraries' catalogs.
DATASET = "fed_loss_differential_train"
COUNTS = [{"id": 1, "image_count": 10}, {"id": 2, "image_count": 3}, {"id": 3, "image_count": 40}]


def _register_everywhere() -> None:
    from detlib.data import MetadataCatalog

    MetadataCatalog.get(DATASET).set(class_image_count=COUNTS)
    try:
        from detectron2.data import MetadataCatalog as D2MetadataCatalog
    except ImportError:
        return
    D2MetadataCatalog.get(DATASET).set(class_image_count=COUNTS)


_register_everywhere()

CASE = Case(
    name="mask_rcnn_fed_loss",
    config="LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    overrides=[
        "DATASETS.TRAIN", (DATASET,),
        "MODEL.ROI_BOX_HEAD.USE_FED_LOSS", True,
        "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", True,
        "MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES", 3,
    ],
)  # fmt: skip

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)
