"""Child processes shared by tests in more than one folder, or by the tests at the top:
everything a spawned child runs is at module level, so the spawn context imports it by
its name (``procs.<module>``). Helpers of one folder's tests live in that folder."""
