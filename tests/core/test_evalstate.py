"""Each checkpoint's evaluation state, folded from the training job's and the evaluations' events."""

from __future__ import annotations

from core.evalstate import (
    CANCELLED,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    derive_eval_states,
    eval_job_name,
    open_steps,
    step_of_job_name,
)
from core.records import event_record


def ev(name: str, t: float, attempt: int = 1, **detail) -> dict:
    return event_record(name, attempt, detail, t=t)


def test_a_checkpoint_goes_queued_running_finished_with_engine_speed_and_pass_at_1() -> None:
    events = [
        ev("eval_requested", 1.0, step=20, checkpoint="/r/checkpoints/checkpoint-20", placement="slurm", job_id="71"),
        ev("eval_started", 5.0, step=20, checkpoint="/r/checkpoints/checkpoint-20", engine="vllm", gpus="0,1",
           job_id="71"),
        ev("eval_progress", 6.0, step=20, phase="generate humaneval", done=64, total=164),
    ]
    s = derive_eval_states(events[:1])[20]
    assert (s.state, s.job_id, s.label()) == (QUEUED, "71", "queued (Slurm job 71)")
    s = derive_eval_states(events)[20]
    assert s.state == RUNNING and s.engine == "vllm" and s.gpus == "0,1"
    assert s.label() == "running: generate humaneval 64/164" and abs(s.fraction - 64 / 164) < 1e-9
    done = derive_eval_states([*events, ev("eval_finished", 9.0, step=20, engine="vllm", gpus="0,1",
                                            tokens_generated=41_000, tokens_per_s=2050.5,
                                            **{"pass@1": {"humaneval/all": 0.5}})])[20]
    assert done.state == FINISHED and done.tokens == 41_000 and done.tokens_per_s == 2050.5
    assert done.pass_at_1 == {"humaneval/all": 0.5} and not done.open


def test_events_out_of_order_are_folded_by_time_and_a_requeue_starts_over() -> None:
    failed = [ev("eval_failed", 3.0, step=40, error="CUDA out of memory"), ev("eval_started", 2.0, step=40),
              ev("eval_requested", 1.0, step=40, placement="alongside", pid=4242)]
    s = derive_eval_states(failed)[40]
    assert s.state == FAILED and s.error == "CUDA out of memory" and s.label() == "failed: CUDA out of memory"
    again = derive_eval_states([*failed, ev("eval_requested", 10.0, step=40, placement="alongside", pid=5151)])[40]
    assert again.state == QUEUED and again.job_id == "5151" and again.error is None and again.requests == 2


def test_cancel_wins_over_the_failure_the_cancel_itself_causes() -> None:
    events = [ev("eval_requested", 1.0, step=60, placement="slurm", job_id="9"), ev("eval_started", 2.0, step=60),
              ev("eval_cancelled", 3.0, step=60, reason="cancelled by the user"),
              ev("eval_failed", 3.5, step=60, error="EvaluationStopped: stopped by signal 15")]
    s = derive_eval_states(events)[60]
    assert s.state == CANCELLED and s.error == "cancelled by the user"


def test_a_restarted_job_or_an_ended_run_closes_evaluations_that_lived_inside_the_job() -> None:
    events = [ev("eval_requested", 1.0, step=20, placement="alongside", pid=11),
              ev("eval_requested", 1.5, step=30, placement="slurm", job_id="5"),
              ev("started", 5.0, attempt=2)]
    states = derive_eval_states(events)
    assert states[20].state == FAILED and "restarted" in states[20].error
    assert states[30].state == QUEUED  # a Slurm evaluation is its own job: the restart does not end it
    assert open_steps(states) == [30]
    after_cancel = derive_eval_states(events, run_status="cancelled")
    assert after_cancel[30].state == CANCELLED
    queued_after_training = derive_eval_states([ev("eval_requested", 1.0, step=20, placement="after_training")],
                                               run_status="failed")
    assert queued_after_training[20].state == FAILED and "the run failed" in queued_after_training[20].error


def test_slurm_job_names_carry_run_and_step_and_are_read_back() -> None:
    name = eval_job_name("20240101-000000-abcd", 120)
    assert name == "tunedeck-20240101-000000-abcd-eval-step-120"
    assert step_of_job_name("20240101-000000-abcd", name) == 120
    assert step_of_job_name("20240101-000000-ffff", name) is None
    assert step_of_job_name("20240101-000000-abcd", "tunedeck-20240101-000000-abcd") is None


def test_a_request_recorded_with_evaluation_switched_off_is_no_evaluation() -> None:
    events = [ev("eval_requested", 1.0, step=20, placement="alongside", pid=None, skipped="TUNEDECK_NO_EVAL=1")]
    assert derive_eval_states(events) == {}
