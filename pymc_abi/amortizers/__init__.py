"""The user-facing objects: :class:`~pymc_abi.Amortizer`,
:class:`~pymc_abi.TwoLevelAmortizer`, :class:`~pymc_abi.ModelComparator`, the verbs that
train them, and their files."""
