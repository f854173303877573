from .distributed_sampler import InferenceSampler, RepeatFactorTrainingSampler, TrainingSampler

__all__ = ["TrainingSampler", "RepeatFactorTrainingSampler", "InferenceSampler"]
