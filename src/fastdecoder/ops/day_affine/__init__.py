"""The day layer's per-day affine map ``x W[day] + b[day]``: the reference gather (``reference.day_affine_gather``,
the published form) and the grouped form that never materialises the gather (``grouped.day_affine``, planned on the
host by ``plan_day_groups``)."""
from fastdecoder.ops.day_affine.grouped import MAX_PADDING, DayGroups, check_days, day_affine, plan_day_groups
from fastdecoder.ops.day_affine.reference import day_affine_gather

__all__ = ["DayGroups", "MAX_PADDING", "check_days", "day_affine", "day_affine_gather", "plan_day_groups"]
