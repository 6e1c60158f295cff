"""The stages of ``ld3``: one thin module per command, and what they share.

Stage modules (``teacher_sample``, ``train``, ``sample``, ``evaluate``, ``run``, ``export``,
``schedules``, ``fid_ref``; listed in :mod:`.table`) read their config, get their inputs, call the
library and write their outputs; none imports another.  What several of them need lives beside
them: :mod:`.artifacts` (the shared look-ups), :mod:`.teacher_pairs` and :mod:`.sample_shards`
(the makers), :mod:`.training` and :mod:`.evaluation`, :mod:`.inference`, :mod:`.context`,
:mod:`.checks`, :mod:`.keys` and :mod:`.runner`.
"""
