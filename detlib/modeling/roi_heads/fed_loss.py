"""Per-class sigmoid classification with the federated loss (for LVIS's long tail, Detectron2's recipe):
each step only the classes present in the batch and a sample of others weighted by their frequency
count as negatives, so that rare classes are not suppressed by images never annotated for them."""

import torch
import torch.nn.functional as F

__all__ = ["get_fed_loss_classes", "sigmoid_cross_entropy"]


def get_fed_loss_classes(
    gt_classes: torch.Tensor, num_fed_loss_classes: int, num_classes: int, weight: torch.Tensor
) -> torch.Tensor:
    """
    The classes the loss counts this step: every foreground class among `gt_classes`, then, up to
    `num_fed_loss_classes` in all, classes drawn without replacement with probability proportional to
    `weight` (K,). Background (index K) is never drawn.
    """
    present = torch.unique(gt_classes)
    if len(present) >= num_fed_loss_classes:
        return present
    prob = torch.zeros(num_classes + 1, device=gt_classes.device)
    prob[:num_classes] = weight.float()
    prob[present] = 0
    drawn = torch.multinomial(prob, num_fed_loss_classes - len(present), replacement=False)
    return torch.cat([present, drawn])


def sigmoid_cross_entropy(logits: torch.Tensor, gt_classes: torch.Tensor, counted: torch.Tensor = None) -> torch.Tensor:
    """
    Binary cross-entropy of each of the K foreground logits of R x (K + 1) `logits` (the background
    logit is unused) against one-hot `gt_classes` (background K: all zeros), summed over the classes in
    `counted` (all when None) and divided by R.
    """
    num_rois, num_classes = logits.shape[0], logits.shape[1] - 1
    if num_rois == 0:
        return logits.sum() * 0.0
    target = F.one_hot(gt_classes, num_classes + 1)[:, :num_classes].to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits[:, :num_classes], target, reduction="none")
    if counted is not None:
        mask = torch.zeros(num_classes + 1, dtype=logits.dtype, device=logits.device)
        mask[counted] = 1
        loss = loss * mask[:num_classes]
    return loss.sum() / num_rois
