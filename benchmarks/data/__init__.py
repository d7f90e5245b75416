"""Data: the corruptions, CIFAR-10 / CIFAR-10-C / ImageNet-C readers and the corrupted-set builders."""
