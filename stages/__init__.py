"""Stage kinds: one module each. `KINDS` maps a kind name to its stage class.

Importing this package must stay cheap (no torch): the compiler reads these declarations.
"""

from stages.base_model import BaseModelStage
from stages.blocks import BlocksStage
from stages.pairs import PairsStage
from stages.prompts import PromptsStage
from stages.pt import PtStage
from stages.rm import RmStage
from stages.sft import SftStage
from stages.tokenize import TokenizeStage

KINDS = {
    s.kind: s
    for s in (
        BaseModelStage,
        TokenizeStage,
        BlocksStage,
        PairsStage,
        PromptsStage,
        PtStage,
        SftStage,
        RmStage,
    )
}
