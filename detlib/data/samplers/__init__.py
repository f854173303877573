from .dataset_mix import DatasetMixSampler
from .distributed_sampler import InferenceSampler, RepeatFactorTrainingSampler, TrainingSampler
from .stream import ConsumedStream, EpochStreamSampler, StreamCursor

__all__ = [
    "TrainingSampler",
    "RepeatFactorTrainingSampler",
    "DatasetMixSampler",
    "InferenceSampler",
    "EpochStreamSampler",
    "StreamCursor",
    "ConsumedStream",
]
