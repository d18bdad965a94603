"""The commands of the digest's weekly preview in the management room (``bridge.preview``
answers them; the bridge and moderation never import each other): declared here so that
the help lists them and they are never taken for unknown commands."""

from __future__ import annotations

from ..commands import Arg, _, registry

ITEM = Arg("id", "word")

registry.elsewhere(
    "hold",
    aliases=("retenir",),
    args=(Arg("id", "word", optional=True),),
    help=_(
        "Keep a quote or a key point of the digest's preview out of the publication "
        "(without ID: the whole digest waits for a release)."
    ),
    examples=(_("{prefix}hold k12"), _("{prefix}hold")),
    answered_by="digest",
)
registry.elsewhere(
    "remove",
    aliases=("retirer",),
    args=(ITEM,),
    help=_("Remove a quote or a key point from the digest for good."),
    examples=(_("{prefix}remove q7"),),
    answered_by="digest",
)
registry.elsewhere(
    "release",
    aliases=("publier",),
    args=(Arg("id", "word", optional=True),),
    help=_("Publish the digest that waits now (with ID: put a held item back)."),
    examples=(_("{prefix}release"), _("{prefix}release k12")),
    answered_by="digest",
)
registry.elsewhere(
    "preview",
    aliases=("apercu", "aperçu"),
    help=_("Post the digest's preview again (or the next week's, early)."),
    examples=(_("{prefix}preview"),),
    answered_by="digest",
)
