"""An Ollama Modelfile beside a GGUF: `ollama create NAME -f Modelfile` then runs the exported model.

Ollama prompts with a Go template of its own, not the Jinja chat template inside the GGUF, so the
tokenizer's template is translated for the families this covers (ChatML: Qwen, SmolLM2; Llama 3;
Phi-3). Both are written in Ollama's `.Messages` form, so multi-turn chats render as the Jinja
template renders them. Any other template gets no TEMPLATE line, and Ollama falls back to guessing
one from the GGUF's tokenizer.chat_template (a comment in the file says so).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("rlvr")

CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}{{ if not (and $last (eq .Role "assistant")) }}<|im_end|>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""

LLAMA3_TEMPLATE = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}{{ if not (and $last (eq .Role "assistant")) }}<|eot_id|>{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}"""

PHI3_TEMPLATE = """{{- if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if ne .Role "system" }}<|{{ .Role }}|>
{{ .Content }}{{ if not (and $last (eq .Role "assistant")) }}<|end|>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|assistant|>
{{ end }}
{{- end }}"""

# family → (Go template, its stop strings, regex for the system block the Jinja template writes)
FAMILIES = {
    "chatml": (CHATML_TEMPLATE, ["<|im_start|>", "<|im_end|>"],
               re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", re.S)),
    "llama3": (LLAMA3_TEMPLATE, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               re.compile(r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S)),
    "phi3": (PHI3_TEMPLATE, ["<|end|>", "<|user|>", "<|assistant|>", "<|system|>"],
             re.compile(r"<\|system\|>\n(.*?)<\|end\|>", re.S)),
}


def template_family(chat_template: str | None) -> str | None:
    """'chatml', 'llama3' or None, from the markers the Jinja chat template writes."""
    if not isinstance(chat_template, str):
        return None
    if "<|im_sep|>" in chat_template:  # Phi-4: ChatML markers without its newlines; no template of ours fits
        return None
    if "<|im_start|>" in chat_template:
        return "chatml"
    if "<|assistant|>" in chat_template and "<|end|>" in chat_template:
        return "phi3"
    if "<|start_header_id|>" in chat_template:
        return "llama3"
    return None


def default_system_prompt(tokenizer, family: str | None) -> str | None:
    """The system text the Jinja template inserts when a chat has none (e.g. SmolLM2's, Qwen's), so the
    Modelfile's default matches what the model saw."""
    if family is None:
        return None
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}], tokenize=False,
                                             add_generation_prompt=True)
    except Exception:  # a template that needs other inputs: no default, nothing lost
        return None
    found = FAMILIES[family][2].search(text.split("\x00")[0])
    return found.group(1) if found and found.group(1) else None


def stop_tokens(tokenizer, family: str | None, eos_token_ids: Iterable[int] = ()) -> list[str]:
    """The family's turn markers plus every end-of-sequence token the model was configured with."""
    stops = list(FAMILIES[family][1]) if family else []
    ids = [tokenizer.eos_token_id, *eos_token_ids]
    for token_id in ids:
        if token_id is not None:
            token = tokenizer.convert_ids_to_tokens(int(token_id))
            if token and token not in stops:
                stops.append(token)
    return stops


def modelfile_text(gguf_name: str, chat_template: str | None, stops: list[str], system: str | None) -> str:
    """The Modelfile itself; `gguf_name` is relative to the Modelfile's folder."""
    family = template_family(chat_template)
    lines = ["# Written by rlvr export. Run: ollama create MODEL_NAME -f <this file>", f"FROM ./{gguf_name}"]
    if family:
        lines.append(f'TEMPLATE """{FAMILIES[family][0]}"""')
    else:
        lines.append("# No TEMPLATE: the chat template is neither ChatML nor Llama 3, so Ollama picks one from the "
                     "GGUF's tokenizer.chat_template; check `ollama show MODEL_NAME --template`")
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    if system:
        lines.append(f'SYSTEM """{system}"""' if '"""' not in system else f"SYSTEM {json.dumps(system)}")
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: str | Path, tokenizer, system: str | None = None, eos_token_ids: Iterable[int] = (),
                    path: str | Path | None = None) -> Path:
    """Write a Modelfile for `gguf_path` (default: `Modelfile` in the same folder). `system` is the default
    system prompt; None uses the one the chat template inserts, if any."""
    gguf_path = Path(gguf_path)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    family = template_family(template)
    if family is None:
        log.warning("Modelfile: chat template not recognised as ChatML or Llama 3; no TEMPLATE written, Ollama will "
                    "pick one from the GGUF")
    if system is None:
        system = default_system_prompt(tokenizer, family)
    out = Path(path) if path is not None else gguf_path.parent / "Modelfile"
    out.write_text(modelfile_text(gguf_path.name, template, stop_tokens(tokenizer, family, eos_token_ids), system))
    return out
