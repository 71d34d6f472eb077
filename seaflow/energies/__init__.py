"""Energy terms (see :mod:`seaflow.energies.base` for the contract)."""

from seaflow.energies.base import EnergyTerm, PromptText, ResponseBatch, Reward
from seaflow.energies.bridge import BridgedRewardModel, TokenBridge
from seaflow.energies.combined import RewardSum
from seaflow.energies.prompted_judge import PromptedJudge
from seaflow.energies.keywords import KeywordReward
from seaflow.energies.lexicon import LexiconReward
from seaflow.energies.reference import ReferenceLogLikelihood
from seaflow.energies.reward_model import RewardModel
from seaflow.energies.text import CallableReward, TextClassifierReward, TextReward
from seaflow.energies.verifier import ExactAnswerReward

__all__ = [
    "EnergyTerm", "PromptText", "ResponseBatch", "Reward", "ReferenceLogLikelihood",
    "RewardModel", "PromptedJudge", "LexiconReward", "KeywordReward",
    "TextReward", "TextClassifierReward", "CallableReward", "BridgedRewardModel", "TokenBridge",
    "ExactAnswerReward", "RewardSum",
]
