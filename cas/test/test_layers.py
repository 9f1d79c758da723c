"""The layer rule: every import in ``cas`` points down the order declared in ``cas/test/layers.py``."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from cas.test import layers

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LayerRuleTests(SynchronousTestCase):
    def test_cas_imports_only_point_down(self) -> None:
        problems = layers.check(TOP)
        self.assertEqual([str(p) for p in problems], [])

    def test_every_declared_layer_exists(self) -> None:
        known = layers.modules(TOP)
        for name, prefixes in layers.LAYERS:
            for prefix in prefixes:
                self.assertIn(prefix, known, f"layer {name} names {prefix}, which is not a module")

    def test_the_checker_sees_the_real_imports(self) -> None:
        """A checker that found no imports at all would pass the first test: it must see the node's."""
        known = layers.modules(TOP)
        targets = {t for _, t in layers.imports("cas.node.core", known["cas.node.core"], known)}
        self.assertIn("cas.network.placement", targets)
        self.assertIn("cas.content.cipher", targets)  # ``from cas.content import cipher``


class PlantedTreeTests(SynchronousTestCase):
    """A small tree with an upward import and a cycle planted in it: both are reported."""

    def plant(self, files: dict[str, str]) -> str:
        top = self.mktemp()
        for path, text in {"cas/__init__.py": "", **files}.items():
            full = os.path.join(top, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w") as f:
                f.write(text)
        return top

    def test_upward_imports_reported_absolute_relative_and_nested(self) -> None:
        top = self.plant({
            "cas/base/__init__.py": "",
            "cas/base/low.py": "def f():\n    from cas.node.core import Node\n",
            "cas/base/rel.py": "from ..store import disk\n",
            "cas/base/plain.py": "import cas.peer.frames\n",
            "cas/store/__init__.py": "",
            "cas/store/disk.py": "from cas.base import low\nfrom . import other\n",
            "cas/store/other.py": "",
            "cas/peer/__init__.py": "",
            "cas/peer/frames.py": "",
            "cas/node/__init__.py": "",
            "cas/node/core.py": "from cas.store.disk import X\nfrom cas import __version__\n",
        })
        found = sorted((p.module, p.line) for p in layers.check(top))
        self.assertEqual(found, [("cas.base.low", 2), ("cas.base.plain", 1), ("cas.base.rel", 1)])
        texts = " ".join(str(p) for p in layers.check(top))
        self.assertIn("imports cas.node.core (node), a layer above its own (base)", texts)
        self.assertIn("imports cas.store.disk (store)", texts)

    def test_cycle_within_a_layer_reported(self) -> None:
        top = self.plant({
            "cas/store/__init__.py": "",
            "cas/store/a.py": "from .b import B\n",
            "cas/store/b.py": "def f():\n    import cas.store.c\n",
            "cas/store/c.py": "from cas.store import a\n",
            "cas/store/d.py": "from cas.store import a\n",
        })
        problems = [str(p) for p in layers.check(top)]
        self.assertEqual(problems, ["cas.store.a:0: import cycle among cas.store.a, cas.store.b, cas.store.c"])

    def test_module_outside_every_layer_reported(self) -> None:
        top = self.plant({"cas/stray.py": "", "cas/test/__init__.py": "", "cas/test/test_x.py": "import cas.stray\n"})
        self.assertEqual([p.module for p in layers.check(top)], ["cas.stray"])
