"""``sam2.utils`` under samforge: ``misc``, ``transforms`` and ``amg``."""
