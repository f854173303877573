"""SemanticSegmentor (SemSegFPNHead with GN on an FPN) against Detectron2: sem_seg and loss_sem_seg."""

from harness import Case, case_tests

CASE = Case(
    name="semantic_fpn",
    config="Misc/semantic_R_50_FPN_1x.yaml",
    overrides=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 4, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 64],
)

test_matches_recorded_detectron2, test_matches_live_detectron2 = case_tests(CASE)
