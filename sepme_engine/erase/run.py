"""`sepme erase`: pick the method, build each concept's preserve set, cache training latents in
the store, train, and save the increments (joining the base's active composition)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sepme_engine import __version__
from sepme_engine.bases import BaseInfo, get_base, load_base
from sepme_engine.config import load_config
from sepme_engine.device import resolve_device, resolve_dtype
from sepme_engine.erase import settings as erase_settings
from sepme_engine.erase.closed_form import mentions
from sepme_engine.erase.common import settings_record
from sepme_engine.errors import AlreadyExists, InvalidInput, SepmeError
from sepme_engine.increments import concept_name, has_increment, list_increments, save_increment
from sepme_engine.store import Store


@dataclass(frozen=True)
class ConceptOutcome:
    concept: str
    prompt: str
    method: str
    iterations: int
    stop_reason: str
    norm: float
    m_k: int | None
    final_lcor: float | None
    final_m: float | None
    unet_passes_data: int
    unet_passes_training: int
    data_cached: bool
    wall_s: float
    # the verdict measured after training (erase/verdict.py)
    verdict: str = ""  # erased / weakened / not erased
    correlation: float | None = None  # residual correlation ρ
    judged_rate: float | None = None  # toy base: bare-prompt rate with the increment
    chance_rate: float | None = None  # toy base: blank-prompt rate, same seeds
    # what would erase it (erase/verdict.py ADVICE: "raise-steps", "use-sepme", "lower-tau"; ""
    # when erased or not checked) and the numbers to try; an interface words it
    advice: str = ""
    suggested_steps: int | None = None  # raise-steps: twice this run's iteration cap
    suggested_tau: float | None = None  # lower-tau: the τ the method's next round would use
    repeatable: bool = False  # the method trains again until erased (`until_erased`)
    tau: float | None = None  # the τ of the kept increment (SepME)
    rounds: int = 1  # trainings run (more than 1 with until_erased)
    unet_passes_verdict: int = 0
    # default preserve prompts E_k crowded the concept with, held softly instead (closed_form.py)
    held_softly: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "held_softly": list(self.held_softly)}


@dataclass(frozen=True)
class EraseReport:
    base: str
    device: str
    dtype: str
    applied: bool
    outcomes: tuple[ConceptOutcome, ...]
    active: tuple[str, ...] = field(default_factory=tuple)
    # resume=True: concepts whose stored increment matched this request and were not retrained
    skipped: tuple[str, ...] = ()
    # keep_going=True: (concept, the error) of the concepts whose training or saving failed
    failed: tuple[tuple[str, SepmeError], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "device": self.device,
            "dtype": self.dtype,
            "applied": self.applied,
            "active": list(self.active),
            "outcomes": [o.to_dict() for o in self.outcomes],
            "skipped": list(self.skipped),
            "failed": [{"concept": c, **e.to_dict()} for c, e in self.failed],
        }


@dataclass(frozen=True)
class Event:
    """Progress events for the CLI: kind is 'images', 'step' (info: the method's step record,
    which carries what the line shows), 'start', 'round' (--until-erased trains again; info:
    {"tau", "steps", "round", "rounds", "verdict"}), 'verify' (measuring the verdict) or 'done'."""

    # also 'skip' (resume: stored and matching) and 'failed' (keep_going; info: the SepmeError,
    # whose data an interface words; the report keeps it too)
    kind: str
    concept: str
    done: int = 0
    total: int = 0
    info: Any = None


def build_e_k(
    prompt: str,
    others: Sequence[str] = (),
    earlier: Sequence[str] = (),
    preserve: Sequence[str] = (),
    default_preserve: Sequence[str] = (),
) -> list[str]:
    """The prompts an increment for `prompt` must leave unchanged (docs/method.md §2's E_k, without the
    blank prompt, which `train_*` always adds first): the other concepts of this call, the
    concepts already erased on the base, the user's `--preserve` prompts, and the profile's default
    preserve prompts — except those that share words with the concept: one the concept's prompt
    mentions or one that mentions the concept (erasing "a red circle" on the toy base keeps neither
    "red" nor "circle" in E_k; erasing "cat" drops a default "a cat"). Sorted and unique, so the
    increment does not depend on the order things were named in."""
    kept = [q for q in default_preserve if not (mentions(prompt, q) or mentions(q, prompt))]
    rest = {q for q in [*others, *earlier, *preserve, *kept] if q.strip() and q != prompt}
    return sorted(rest)


def erase_request(
    method: str, prompt: str, e_k: Sequence[str], config: Any, until_erased: bool, digest: str
) -> dict[str, Any]:
    """What an increment was asked for, stored in its manifest (stats["request"]): a resumed
    list run skips a concept whose stored request equals this one, and retrains it (--force) or
    refuses when it differs."""
    from dataclasses import asdict

    return {
        "method": method,
        "prompt": prompt,
        "e_k": list(e_k),
        "settings": json.loads(json.dumps(asdict(config))),  # as the manifest stores it
        "until_erased": until_erased,
        "base_digest": digest,
    }


def request_diff(stored: dict[str, Any] | None, wanted: dict[str, Any]) -> list[str]:
    """The parts of `wanted` the stored request differs in ([] = the same request); an
    increment without a stored request (made before requests were recorded) differs in all."""
    if not isinstance(stored, dict):
        return ["request (not recorded)"]
    out = [
        k
        for k in ("method", "prompt", "e_k", "until_erased", "base_digest")
        if stored.get(k) != wanted[k]
    ]
    got = stored.get("settings")
    settings: dict[str, Any] = got if isinstance(got, dict) else {}
    out += [f"settings.{k}" for k, v in wanted["settings"].items() if settings.get(k) != v]
    return out


def _latents_key(
    base: BaseInfo, prompt: str, settings: dict[str, Any], dtype: str, pipe: Any
) -> str:
    ident = {
        "base": base.base_digest,
        "prompt": prompt,
        "n": settings["images"],
        "steps": settings["image_steps"],
        "guidance": settings["image_guidance"],
        "seed": settings["seed"],
        "dtype": dtype,
        "scheduler": type(pipe.scheduler).__name__,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def training_latents(
    store: Store,
    base: BaseInfo,
    pipe: Any,
    prompt: str,
    settings: dict[str, Any],
    device: Any,
    dtype: str,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Any, int, bool]:
    """(latents, unet_passes spent, cached?) — generated once per base/prompt/settings, then cached."""
    from safetensors.torch import load_file, save_file

    from sepme_engine.erase.data import generate_training_latents
    from sepme_engine.store.atomic import atomic_open

    path = (
        store.cache_dir
        / "latents"
        / f"{_latents_key(base, prompt, settings, dtype, pipe)}.safetensors"
    )
    if path.is_file():
        try:
            return load_file(str(path))["latents"], 0, True
        except Exception:  # a damaged cache entry is regenerated
            path.unlink(missing_ok=True)
    latents, passes = generate_training_latents(
        pipe,
        prompt,
        n=int(settings["images"]),
        steps=int(settings["image_steps"]),
        guidance=float(settings["image_guidance"]),
        seed=int(settings["seed"]),
        device=device,
        progress=progress,
    )
    tmp = store.incomplete_path("latents")
    try:
        save_file({"latents": latents.contiguous()}, str(tmp), metadata={"prompt": prompt})
        with atomic_open(path) as fh:
            fh.write(tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return latents, passes, False


def erase(
    store: Store,
    concepts: Sequence[str],
    *,
    base: str | None = None,
    prompt: str | None = None,
    preserve: Sequence[str] = (),
    use_default_preserve: bool = True,
    overrides: dict[str, Any] | None = None,
    method: str = "sepme",
    device: str | None = None,
    dtype: str | None = None,
    apply: bool = True,
    force: bool = False,
    on_event: Callable[[Event], None] | None = None,
    until_erased: bool = False,
    verify: bool = True,
    known: Sequence[str] = (),
    preserve_for: Mapping[str, Sequence[str]] | None = None,
    resume: bool = False,
    keep_going: bool = False,
) -> EraseReport:
    """Train one increment per concept. Several concepts = the all-known scenario.

    Each increment's E_k is `build_e_k(...)`: the call's other concepts, the base's earlier
    increments, `preserve`, and (unless `use_default_preserve` is false) the profile's default
    preserve prompts from the config (`preserve`; the toy profile's are its 13 concepts).

    After training, each concept gets a verdict (erase/verdict.py: residual correlation, and on
    the toy base the judged rate of its bare prompt against the blank prompt's) unless `verify`
    is false. `until_erased` (SepME): while the verdict is not "erased", train again with a lower
    τ (or, when the run reached its cap, twice the cap), at most `until_rounds` more times.

    A list run (erase/batch.py) passes the list's other concepts as `known`: their prompts join
    every E_k as the call's own concepts do, and their increments landing in the store while
    this call trains (another rank of the same list) are no conflict. `preserve_for` adds
    per-concept preserve prompts. `resume`: a concept whose stored increment records the same
    request (erase_request: method, prompt, E_k, settings) is skipped ('skip' event); one whose
    request differs is retrained with `force`, else refused before anything trains.
    `keep_going`: a concept whose training or saving raises a SepmeError is reported in
    `failed` and the others go on."""
    import torch

    from sepme_engine.models.text import check_prompt, check_vocabulary

    emit = on_event or (lambda _e: None)
    if not concepts:
        raise InvalidInput("name at least one concept to erase", kind="no-concept")
    module = erase_settings.method_module(method)
    erase_settings.check_options(method, overrides or {})
    if prompt is not None and len(concepts) > 1:
        raise InvalidInput(
            f"a prompt applies to one concept; {len(concepts)} were given",
            hint="erase them one call each",
            kind="prompt-several",
        )
    info = get_base(store, base)
    targets: list[tuple[str, str]] = []
    for text in concepts:
        p = prompt if prompt is not None else text
        if not p.strip():
            raise InvalidInput(
                "the concept prompt is empty",
                hint="give the text to erase",
                kind="no-concept",
            )
        targets.append((concept_name(text), p))
    names = [n for n, _ in targets]
    if len(set(names)) != len(names):
        raise InvalidInput(f"a concept is named twice: {', '.join(names)}")
    known = [k for k in known if k not in {p for _, p in targets}]
    mates = {concept_name(k) for k in known}  # the list's other concepts (other ranks')
    if not resume:
        for name in names:
            if has_increment(store, info.name, name) and not force:
                raise AlreadyExists(
                    f"increment {name!r} exists on base {info.name!r}",
                    kind="increment",
                    name=name,
                    base=info.name,
                )
    cfg = load_config(store.root)
    dev = resolve_device(device or cfg.get("device"))
    dtype_name = resolve_dtype(dtype or cfg.get("dtype"), dev)
    # the method's Config, built once: defaults < config.toml < the command line
    settings = erase_settings.build(method, info.profile, cfg, overrides, dtype=dtype_name)
    config = settings.config
    from sepme_engine.increments import store_view  # E_k's view, checked again when saving

    mine = set(names) | mates
    view = store_view(store, info.name, exclude=mine)
    earlier = [i.prompt for i in list_increments(store, info.name) if i.concept not in mine]
    default_preserve = list(settings.preserve) if use_default_preserve else []
    if until_erased and getattr(module, "next_round", None) is None:
        raise InvalidInput(
            f"erasing until erased trains SepME again with a lower τ; it does not apply to {method}",
            hint="erase once, or use the sepme method",
            kind="until-erased",
        )
    extra_preserve = dict(preserve_for or {})
    e_ks: dict[str, list[str]] = {}
    removable: dict[str, list[str]] = {}  # default preserves only: SepME may hold them softly
    requests: dict[str, dict[str, Any]] = {}
    for name, p in targets:
        others = [*[tp for tn, tp in targets if tn != name], *known]
        users = [*preserve, *extra_preserve.get(p, ())]
        e_ks[name] = build_e_k(
            p, others=others, earlier=earlier, preserve=users, default_preserve=default_preserve
        )
        fixed = {*others, *earlier, *users}
        removable[name] = [q for q in e_ks[name] if q in set(default_preserve) - fixed]
        requests[name] = erase_request(
            method, p, e_ks[name], config, until_erased, info.base_digest
        )
    skipped: list[str] = []
    if resume:
        from sepme_engine.increments import get_increment

        differ: list[str] = []
        for name, _ in targets:
            if not has_increment(store, info.name, name):
                continue
            stored = get_increment(store, info.name, name).stats.get("request")
            diff = request_diff(stored, requests[name])
            if not diff:
                skipped.append(name)
            elif not force:
                differ.append(f"{name} ({', '.join(diff[:3])})")
        if differ:
            raise AlreadyExists(
                f"stored increments differ from this request in settings or E_k: "
                f"{'; '.join(differ)}",
                kind="increments",
                base=info.name,
            )
        for name in skipped:
            emit(Event("skip", name))
        if skipped and apply:  # a run killed between manifest and composition finishes here
            from sepme_engine.increments import active_set, set_active

            with store.locked():
                now = set(active_set(store, info.name))
                if not set(skipped) <= now:
                    set_active(store, info.name, sorted(now | set(skipped)))
        targets = [(n, p) for n, p in targets if n not in skipped]
    failed: list[tuple[str, SepmeError]] = []
    outcomes: list[ConceptOutcome] = []
    if not targets:
        from sepme_engine.increments import active_set

        return EraseReport(
            info.name,
            str(dev),
            dtype_name,
            apply,
            (),
            tuple(active_set(store, info.name)),
            tuple(skipped),
        )
    pipe = load_base(store, info.name, device=dev, dtype=getattr(torch, dtype_name))
    for _, p in targets:
        check_prompt(pipe, p)
        check_vocabulary(pipe, p, force=force)  # words the tokenizer only spells out
    for p in [*preserve, *default_preserve, *(q for v in extra_preserve.values() for q in v)]:
        check_prompt(pipe, p)
    toy_samples = settings.verify_samples if info.profile == "toy" else 0
    for name, p in targets:
        try:
            outcome = _one(
                store,
                info,
                pipe,
                name,
                p,
                e_ks[name],
                removable[name],
                requests[name],
                settings,
                dev,
                dtype_name,
                verify,
                until_erased,
                toy_samples,
                force,
                apply,
                view,
                emit,
            )
        except SepmeError as exc:
            if not keep_going:
                raise
            failed.append((name, exc))
            emit(Event("failed", name, info=exc))
            continue
        outcomes.append(outcome)
        emit(Event("done", name, info=outcome))
    from sepme_engine.increments import active_set

    return EraseReport(
        info.name,
        str(dev),
        dtype_name,
        apply,
        tuple(outcomes),
        tuple(active_set(store, info.name)),
        tuple(skipped),
        tuple(failed),
    )


def _one(
    store: Store,
    info: BaseInfo,
    pipe: Any,
    name: str,
    p: str,
    e_k: list[str],
    removable: list[str],
    request: dict[str, Any],
    settings: erase_settings.EraseSettings,
    dev: Any,
    dtype_name: str,
    verify: bool,
    until_erased: bool,
    toy_samples: int,
    force: bool,
    apply: bool,
    view: Any,
    emit: Callable[[Event], None],
) -> ConceptOutcome:
    """Train, judge and save one concept's increment."""
    method = settings.method
    module = erase_settings.method_module(method)
    emit(Event("start", name))
    t0 = time.perf_counter()

    def on_images(done: int, total: int, name: str = name) -> None:
        emit(Event("images", name, done, total))

    def on_step(s: Any, name: str = name) -> None:
        emit(Event("step", name, s.iteration, s.max_steps, s))

    data_passes, cached = 0, False
    latents = None
    if module.TRAINING_DATA:
        data = {k: settings.word(k) for k in ("images", "image_steps", "image_guidance", "seed")}
        latents, data_passes, cached = training_latents(
            store, info, pipe, p, data, dev, dtype_name, progress=on_images
        )
    run_cfg = settings.config
    held: list[str] = []
    relax = getattr(module, "relax_e_k", None)
    if relax is not None and removable:
        e_k, held = relax(pipe, p, e_k, removable, run_cfg)
    trained = module.train(pipe, p, e_k, latents, run_cfg, dev, progress=on_step)
    checked = None
    verdict_passes = 0
    rounds = 1
    if verify:
        emit(Event("verify", name))
        checked = _verdict(pipe, trained, p, latents, toy_samples)
        verdict_passes += checked.unet_passes
        extra = settings.until_rounds if until_erased else 0
        while checked.status != "erased" and rounds <= extra:
            run_cfg = module.next_round(run_cfg, trained)
            emit(
                Event(
                    "round",
                    name,
                    rounds,
                    extra,
                    {
                        "tau": run_cfg.tau,
                        "steps": run_cfg.max_steps,
                        "round": rounds,
                        "rounds": extra,
                        "verdict": checked.status,
                    },
                )
            )
            trained = module.train(pipe, p, e_k, latents, run_cfg, dev, progress=on_step)
            checked = _verdict(pipe, trained, p, latents, toy_samples)
            verdict_passes += checked.unet_passes
            rounds += 1
    wall = time.perf_counter() - t0
    stats = {
        **trained.stats,
        "train_wall_s": round(trained.wall_s, 3),
        "unet_passes_data": data_passes,
        "unet_passes_training": trained.unet_passes_training,
        "data_cached": cached,
        "wall_s": round(wall, 3),
        **({"verdict": checked.to_dict(), "rounds": rounds} if checked is not None else {}),
        **({"held_softly": held} if held else {}),
        "device": str(dev),
        "dtype": dtype_name,
        "sepme_version": __version__,
        "request": request,
    }
    saved = save_increment(
        store,
        info,
        name,
        trained.increment,
        prompt=p,
        method=method,
        m_k=trained.m_k,
        iterations=trained.iterations,
        stop_reason=trained.stop_reason,
        preserve_prompts=["", *e_k] if module.KEEPS_PRESERVE else [],
        settings=settings_record(method, run_cfg),
        stats=stats,
        force=force,
        activate=apply,
        expect=view,
    )
    advice = checked.advice if checked is not None else ""
    next_round = getattr(module, "next_round", None)
    steps_field = erase_settings.field_of(module, "steps")
    suggested_steps = suggested_tau = None
    if advice == "raise-steps" and hasattr(run_cfg, steps_field):
        suggested_steps = 2 * int(getattr(run_cfg, steps_field))  # what next_round would run
    if advice == "lower-tau" and next_round is not None:
        suggested_tau = getattr(next_round(run_cfg, trained), "tau", None)
    outcome = ConceptOutcome(
        concept=name,
        prompt=p,
        method=method,
        iterations=trained.iterations,
        stop_reason=trained.stop_reason,
        norm=saved.norm,
        m_k=trained.m_k,
        final_lcor=trained.stats.get("final_lcor"),
        final_m=trained.stats.get("final_m"),
        unet_passes_data=data_passes,
        unet_passes_training=trained.unet_passes_training,
        data_cached=cached,
        wall_s=round(wall, 3),
        verdict=checked.status if checked else "",
        correlation=checked.correlation if checked else None,
        judged_rate=checked.judged_rate if checked else None,
        chance_rate=checked.chance_rate if checked else None,
        advice=advice,
        suggested_steps=suggested_steps,
        suggested_tau=suggested_tau,
        repeatable=next_round is not None,
        tau=getattr(run_cfg, "tau", None),  # a method that stops on a threshold
        rounds=rounds,
        unet_passes_verdict=verdict_passes,
        held_softly=tuple(held),
    )
    return outcome


def _verdict(pipe: Any, trained: Any, prompt: str, latents: Any, toy_samples: int) -> Any:
    """The verdict of a trained increment; without training latents (closed-form methods) the
    correlation is measured on noise-only draws (x_0 = 0)."""
    import torch

    from sepme_engine.erase.verdict import verdict
    from sepme_engine.toy.vocab import CONCEPTS

    if latents is None:
        cfg = pipe.unet.config
        size = int(cfg.sample_size)
        latents = torch.zeros(1, int(cfg.in_channels), size, size)
    toy_concept = prompt if toy_samples > 0 and prompt in CONCEPTS else None
    return verdict(
        pipe,
        trained.increment,
        prompt,
        latents,
        trained.stop_reason,
        toy_concept=toy_concept,
        toy_samples=max(toy_samples, 1),
    )
