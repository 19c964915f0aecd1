"""Why does jointly trained GRank gain more over generator_only on validation than on test?
(docs/EXPERIMENTS.md.) No training: the same checkpoints evaluated with the newest history item
moved.

- ``val``: history s[:n-2], target s[n-2]. The newest history item is the user's last training
  item, a training target in every epoch.
- ``test``: history s[:n-1], target s[n-1]. The newest history item is the validation item,
  never trained on for this user.
- ``test_skip``: history s[:n-2], target s[n-1]: test's target behind validation's history (the
  validation item is skipped, and excluded from the ranking like every seen item).
- ``val_skip``: history s[:n-3], target s[n-2]: the same one-item gap on validation's target
  (the last training item skipped and excluded), the control for the gap itself.

If GRank's lead follows the history (large on val and both skip stages, small on test), what
differs is the newest item being a memorised training target; if it follows the target (large
on val and val_skip, small on test and test_skip), it is the held-out items themselves.

    python -m docs.experiments.newest_item BASE_s0.pt OTHER_s0.pt BASE_s1.pt OTHER_s1.pt ...
"""
from docs.experiments.paired import parse_seed_pairs, seed_pairs
from grank.data import HELD_OUT, Split

STAGES = ("val", "test", "test_skip", "val_skip")


class ShiftedSplit(Split):
    """``Split`` with the two skip stages. AT[stage] = (items after the history, items from the
    target to the end), so history = s[:n - AT[0]] and target = s[n - AT[1]]; everything before
    the target, the skipped item included, is excluded from the ranking (``eval_inputs``)."""
    AT = {"val": (HELD_OUT, HELD_OUT), "test": (HELD_OUT - 1, HELD_OUT - 1),
          "test_skip": (HELD_OUT, HELD_OUT - 1), "val_skip": (HELD_OUT + 1, HELD_OUT)}

    def _n(self, u):
        return int(self.data.offsets[u + 1] - self.data.offsets[u])

    def history_len(self, u: int, stage: str) -> int:
        return self._n(u) - self.AT[stage][0]

    def target_index(self, u: int, stage: str) -> int:
        return self._n(u) - self.AT[stage][1]


def main(argv=None):
    paths = parse_seed_pairs("newest_item", __doc__,
                             "BASE OTHER checkpoints, two per seed (e.g. generator_only then GRank); "
                             "each pair is compared on the four stages above", argv)
    seed_pairs(paths, stages=STAGES, split_cls=ShiftedSplit)


if __name__ == "__main__":
    main()
