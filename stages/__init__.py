"""Stage kinds: one module each. `KINDS` maps a kind name to its stage class.

Importing this package must stay cheap (no torch): the compiler reads these declarations.
"""

from stages.base_model import BaseModelStage
from stages.blocks import BlocksStage
from stages.dpo import DpoStage
from stages.eval import EvalStage
from stages.export import ExportStage
from stages.grpo import GrpoStage
from stages.kto import KtoStage
from stages.kto_data import KtoDataStage
from stages.orpo import OrpoStage
from stages.pairs import PairsStage
from stages.ppo import PpoStage
from stages.prompts import PromptsStage
from stages.pt import PtStage
from stages.rloo import RlooStage
from stages.rm import RmStage
from stages.sft import SftStage
from stages.simpo import SimpoStage
from stages.tokenize import TokenizeStage

KINDS = {
    s.kind: s
    for s in (
        BaseModelStage,
        TokenizeStage,
        BlocksStage,
        PairsStage,
        KtoDataStage,
        PromptsStage,
        PtStage,
        SftStage,
        RmStage,
        PpoStage,
        DpoStage,
        KtoStage,
        OrpoStage,
        SimpoStage,
        GrpoStage,
        RlooStage,
        EvalStage,
        ExportStage,
    )
}
