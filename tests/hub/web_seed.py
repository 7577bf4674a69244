"""The adapters the page tests (HTTP and browser) search and open: public ones with cards in
markdown (one with hostile HTML), a PEFT one naming another base of the same shapes, one made for
a wider model, and a private one of organisation acme (alice is its admin, bob a read member)."""

from __future__ import annotations

from pathlib import Path

from .conftest import Hub, lora_bert
from .test_search import push, wide_kit

SST2 = "alice/sst2-sentiment"
NER = "alice/german-ner"
WIDE = "alice/wide-sentiment"
PRIVATE = "acme/contract-clauses"
HOSTILE = '<script>document.title="owned"</script> <img src=x onerror="document.title=\'owned\'">'


def card(task: str, language: str, license: str, base: str, title: str, text: str) -> str:
    return "\n".join(["---", f"pipeline_tag: {task}", f"language: {language}", f"license: {license}",
                      f"base_model: {base}", "tags:", "- demo", "---", "", f"# {title}", "", text, ""])


SST2_CARD = card("text-classification", "en", "mit", "tiny-bert", "SST-2 sentiment LoRA", "\n".join([
    "Classifies English movie reviews as **positive** or *negative*.", "",
    "| split | accuracy |", "|---|---|", "| validation | 0.91 |", "",
    "```python", 'kit.load("hub://alice/sst2-sentiment")', "```", "",
    f"Raw HTML is shown as text: {HOSTILE}", "",
    "[a javascript link](javascript:alert(1)) and [the docs](https://example.org/docs)."]))
NER_CARD = card("token-classification", "de", "apache-2.0", "tiny-bert-copy", "German entities",
                "Finds names of people, places and companies in German newspaper text.")
WIDE_CARD = card("text-classification", "en", "mit", "tiny-bert-wide", "Wide sentiment",
                 "Classifies English product reviews by sentiment, for a wider BERT.")
PRIVATE_CARD = card("text-classification", "en", "proprietary", "tiny-bert", "Contract clauses",
                    "Labels the clauses of legal contracts: termination, liability, payment.")


def seed(hub: Hub, tmp: Path) -> None:
    push(hub, lora_bert(0).kit, SST2, SST2_CARD, tmp)
    push(hub, lora_bert(1).kit, NER, NER_CARD, tmp, fmt="peft")
    push(hub, wide_kit(), WIDE, WIDE_CARD, tmp)
    push(hub, lora_bert(2).kit, PRIVATE, PRIVATE_CARD, tmp, private=True)
