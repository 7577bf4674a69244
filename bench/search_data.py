"""Synthetic adapter cards for bench/search.py: realistic text from vocabularies of tasks,
domains, languages, methods, base models and licences, plus the queries the benchmark asks.

Card ``i`` is a pure function of ``i`` (a seeded generator per card), so every run and both back
ends see the same 100,000 cards."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

TASKS = {  # task -> (short name, sentence templates)
    "text-classification": ("classifier", ["Classifies {docs} from the {domain} domain by {aspect}.",
                                           "Labels {domain} {docs} with their {aspect}."]),
    "token-classification": ("ner", ["Finds names of people, places and organisations in {domain} {docs}.",
                                     "Tags {entities} in {docs} about {domain}."]),
    "summarization": ("summarizer", ["Writes short summaries of long {domain} {docs}.",
                                     "Condenses {docs} on {domain} into a few sentences."]),
    "translation": ("translator", ["Translates {domain} {docs} into English.",
                                   "Turns {docs} about {domain} into fluent English."]),
    "question-answering": ("qa", ["Answers questions about {domain} {docs}.",
                                  "Finds the answer span in {docs} from {domain}."]),
    "text-generation": ("writer", ["Generates {domain} {docs} in a {style} style.",
                                   "Drafts new {docs} for {domain} teams, {style} in tone."]),
    "sentence-similarity": ("embedder", ["Scores how similar two {domain} {docs} are.",
                                         "Embeds {docs} about {domain} for semantic retrieval."]),
    "zero-shot-classification": ("zeroshot", ["Sorts {domain} {docs} into labels it has never seen."]),
    "conversational": ("chat", ["A helpful assistant that chats about {domain} and answers from {docs}.",
                                "Holds {style} conversations with customers about {domain}."]),
    "text2text-generation": ("rewriter", ["Rewrites {domain} {docs} in plain language.",
                                          "Corrects grammar and spelling in {domain} {docs}."]),
    "fill-mask": ("mlm", ["Domain-adapted masked language model for {domain} {docs}."]),
    "code-generation": ("coder", ["Writes {style} code snippets for {domain} data pipelines.",
                                  "Completes scripts that process {domain} {docs}."]),
}
DOMAINS = {
    "legal": ["contracts", "court rulings", "clauses"], "medical": ["clinical notes", "discharge letters"],
    "finance": ["earnings calls", "analyst reports"], "news": ["newspaper articles", "headlines"],
    "sports": ["match reports", "player interviews"], "cooking": ["recipes", "menu descriptions"],
    "travel": ["hotel reviews", "travel guides"], "retail": ["product reviews", "customer emails"],
    "gaming": ["game reviews", "chat logs"], "science": ["paper abstracts", "lab reports"],
    "education": ["student essays", "exam questions"], "insurance": ["claims", "policy documents"],
    "energy": ["maintenance logs", "grid reports"], "telecom": ["support tickets", "call transcripts"],
    "real estate": ["property listings", "lease agreements"],
    "automotive": ["repair manuals", "owner forums"],
    "aviation": ["pilot reports", "incident summaries"], "agriculture": ["crop bulletins", "farm forums"],
    "politics": ["parliament speeches", "policy briefs"], "music": ["album reviews", "lyrics"],
    "film": ["movie reviews", "screenplays"], "biology": ["protein descriptions", "gene annotations"],
    "chemistry": ["safety data sheets", "synthesis notes"], "hr": ["job postings", "cv summaries"],
    "marketing": ["ad copy", "campaign briefs"], "security": ["threat reports", "vulnerability notes"],
    "social media": ["tweets", "forum posts"], "government": ["public notices", "tender documents"],
    "pharma": ["drug labels", "trial protocols"], "logistics": ["shipping notices", "delivery complaints"],
    "banking": ["transaction descriptions", "loan applications"], "psychology": ["therapy transcripts"],
    "history": ["archival letters", "chronicles"], "philosophy": ["essays", "dialogues"],
    "climate": ["weather bulletins", "emission reports"], "space": ["mission logs", "telescope proposals"],
    "fashion": ["product descriptions", "style blogs"], "hospitality": ["guest reviews", "booking requests"],
    "construction": ["site reports", "building codes"], "mathematics": ["proofs", "exercise sheets"],
}
LANGUAGES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
             "pt": "Portuguese", "nl": "Dutch", "sv": "Swedish", "pl": "Polish", "ja": "Japanese",
             "zh": "Chinese", "ko": "Korean", "ar": "Arabic", "hi": "Hindi", "tr": "Turkish"}
ASPECTS = ["sentiment", "topic", "urgency", "toxicity", "intent", "formality", "stance", "spam"]
ENTITIES = ["drug names", "company names", "dates and amounts", "locations", "product codes"]
STYLES = ["formal", "friendly", "concise", "playful", "technical"]
METHODS = ["lora"] * 6 + ["ia3", "bottleneck", "prefix", "dora", "loha"]
BASES = [("bert-base-uncased", "bert", 12, 768), ("roberta-base", "roberta", 12, 768),
         ("distilbert-base-uncased", "distilbert", 6, 768), ("xlm-roberta-base", "xlm-roberta", 12, 768),
         ("SmolLM2-135M", "llama", 30, 576), ("Llama-3.2-1B", "llama", 16, 2048),
         ("gpt2", "gpt2", 12, 768), ("t5-small", "t5", 6, 512), ("Qwen2.5-0.5B", "qwen2", 24, 896),
         ("Mistral-7B-v0.3", "mistral", 32, 4096)]
LICENSES = ["mit", "apache-2.0", "cc-by-4.0", "cc-by-nc-4.0", "llama3", "openrail"]
EXTRAS = ["Works best on inputs under 256 tokens.", "Evaluated on a held-out split; see the table below.",
          "Trained on a single GPU in under an hour.", "Merges cleanly into the base weights.",
          "Use it with adapterkit or PEFT.", "Data was deduplicated and filtered for quality."]


@dataclass
class Card:
    repo: str
    owner: str
    private: bool
    task: str
    domain: str
    language: str
    method: str
    base: str
    model_type: str
    license: str
    meta: dict[str, Any]
    readme: str
    requires: dict[str, list[int] | None]
    downloads: int


def _requires(base: tuple[str, str, int, int], variant: int) -> dict[str, list[int] | None]:
    _name, model_type, layers, hidden = base
    sites = [["q", "v"], ["q", "k", "v", "o"], ["q", "v", "up", "down"]][variant]
    wide = {"up": [4 * hidden, hidden], "down": [hidden, 4 * hidden]}
    return {f"{model_type}.layers.{layer}.{s}": wide.get(s, [hidden, hidden])
            for layer in range(layers) for s in sites}


def card(i: int, owners: int = 500) -> Card:
    g = random.Random(i * 7919 + 17)
    task = g.choice(list(TASKS))
    short, templates = TASKS[task]
    domain = g.choice(list(DOMAINS))
    lang = g.choice(list(LANGUAGES)) if g.random() < 0.6 else "en"
    method, base, lic = g.choice(METHODS), g.choice(BASES), g.choice(LICENSES)
    owner = f"org{g.randrange(owners)}"
    sentence = g.choice(templates).format(docs=g.choice(DOMAINS[domain]), domain=domain,
                                          aspect=g.choice(ASPECTS), entities=g.choice(ENTITIES),
                                          style=g.choice(STYLES))
    rank = g.choice([4, 8, 16, 32])
    text = (f"{sentence} Input text is in {LANGUAGES[lang]}. Trained with {method.upper()} (rank {rank}) "
            f"on about {g.randrange(2, 200)}k {domain} examples. {g.choice(EXTRAS)}")
    tags = [domain, task.split("-")[0], g.choice(ASPECTS)] if g.random() < 0.8 else [domain]
    title = f"{domain.title()} {short} ({LANGUAGES[lang]})"
    repo = f"{owner}/{domain.replace(' ', '-')}-{short}-{lang}-{i}"
    card_meta = {"base_model": base[0], "tasks": [task], "language": [lang], "license": lic, "tags": tags}
    meta = {"adapter": {"format": "adapterkit", "method": method, "rank": rank, "base_model_type": base[1]},
            "card": card_meta, "parameters": rank * 1000 * base[2]}
    readme = f"---\nlicense: {lic}\n---\n\n# {title}\n\n{text}\n"
    return Card(repo, owner, g.random() < 0.1, task, domain, lang, method, base[0], base[1], lic, meta,
                readme, _requires(base, g.randrange(3)), int(g.paretovariate(1.2) * 10))


def fingerprint_of(base_name: str, variant_sites: int = 2) -> dict[str, Any]:
    """A model fingerprint that every requirement variant of ``base_name`` fits."""
    base = next(b for b in BASES if b[0] == base_name)
    modules: dict[str, list[int]] = {}
    for v in range(variant_sites + 1):
        modules.update({k: list(s or []) for k, s in _requires(base, v).items()})
    return {"model_type": base[1], "modules": modules}


def text_queries(n: int, seed: int = 1) -> list[str]:
    g = random.Random(seed)
    out = []
    for _ in range(n):
        domain = g.choice(list(DOMAINS))
        kind = g.randrange(3)
        if kind == 0:
            out.append(f"{domain} {g.choice(DOMAINS[domain])}")
        elif kind == 1:
            out.append(f"{TASKS[g.choice(list(TASKS))][0]} {LANGUAGES[g.choice(list(LANGUAGES))]}")
        else:
            out.append(f"{g.choice(ASPECTS)} {domain}")
    return out


PARAPHRASES = ["find {what} in {lang} {domain} documents", "an adapter that summarises {domain} texts",
               "detect {aspect} of {lang} {domain} messages", "chatbot for {domain} customer questions",
               "translate {lang} {domain} writing to english", "answer questions over {domain} files",
               "generate {domain} content", "which model spots {what} in {domain} paperwork"]


def semantic_queries(n: int, seed: int = 2) -> list[str]:
    g = random.Random(seed)
    return [g.choice(PARAPHRASES).format(what=g.choice(ENTITIES), lang=g.choice(list(LANGUAGES.values())),
                                         domain=g.choice(list(DOMAINS)), aspect=g.choice(ASPECTS))
            for _ in range(n)]


def filters(n: int, seed: int = 3) -> list[dict[str, str]]:
    g = random.Random(seed)
    out = []
    for _ in range(n):
        kind = g.randrange(3)
        if kind == 0:
            out.append({"task": g.choice(list(TASKS)), "language": g.choice(list(LANGUAGES))})
        elif kind == 1:
            out.append({"method": "lora", "license": g.choice(LICENSES)})
        else:
            out.append({"model_type": g.choice(BASES)[1], "task": g.choice(list(TASKS))})
    return out
