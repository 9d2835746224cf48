// The chaos script against the run's duration (found by exploratory testing: each step was
// awaited in turn, an `up` waiting for its process to be ready, so later steps ran late and the
// load went on until the last one was done, well past --duration). The run ends at its
// duration whatever a step is doing; a step not yet started then is skipped; a slow step
// delays only the next steps on its own process.
import { describe, expect, it } from 'vitest'
import { type ChaosAction, type ChaosStep, playChaosScript } from '../../../examples/shop/chaos.js'
import { ManualClock } from '../../../src/testing/index.js'

const step = (at: number, target: 'payments' | 'relay' | 'inventory'): ChaosStep => ({
  at,
  action: { kind: 'down', target },
})

/** Records when each action started; each one's completion is released by the test. */
function recorder(clock: ManualClock) {
  const started: { target: string; at: number }[] = []
  const release: (() => void)[] = []
  const apply = (action: ChaosAction): Promise<void> => {
    started.push({ target: 'target' in action ? action.target : action.kind, at: clock.now() })
    return new Promise((resolve) => release.push(resolve))
  }
  return { started, release, apply }
}

/** Plays `script` on a fresh ManualClock (at `startMs`), recording the actions started. */
function play(
  script: readonly ChaosStep[],
  durationMs = 10_000,
  stop = new AbortController().signal,
  startMs = 0,
) {
  const clock = new ManualClock(startMs)
  const recorded = recorder(clock)
  const run = playChaosScript({ clock, script, durationMs, stop, apply: recorded.apply })
  return { clock, run, ...recorded }
}

function flag(promise: Promise<void>): { done: boolean } {
  const state = { done: false }
  void promise.then(() => {
    state.done = true
  })
  return state
}

describe('playChaosScript', () => {
  it('plays each step at its fraction of the duration and ends at the duration', async () => {
    const { clock, run, started, release } = play(
      [step(0.1, 'payments'), step(0.5, 'relay')],
      10_000,
      undefined,
      1_000,
    )
    const ended = flag(run.ended)
    await clock.advance(999)
    expect(started).toEqual([])
    await clock.advance(1)
    expect(started).toEqual([{ target: 'payments', at: 2_000 }])
    release[0]!()
    await clock.advance(4_000)
    expect(started.at(-1)).toEqual({ target: 'relay', at: 6_000 })
    release[1]!()
    await clock.advance(4_999)
    expect(ended.done).toBe(false)
    await clock.advance(1)
    expect(ended.done).toBe(true)
    await run.stepsDone
  })

  it('ends at the duration while a slow step runs, and skips the steps not yet started', async () => {
    const { clock, run, started, release } = play([
      step(0.1, 'payments'),
      step(0.5, 'payments'),
      step(0.9, 'payments'),
    ])
    const ended = flag(run.ended)
    const stepsDone = flag(run.stepsDone)
    // The first step (an `up` waiting for readiness, say) is still running at the end.
    await clock.advance(10_000)
    expect(ended.done).toBe(true)
    expect(stepsDone.done).toBe(false)
    release[0]!()
    await clock.advance(5_000)
    expect(stepsDone.done).toBe(true)
    expect(started.map((s) => s.target)).toEqual(['payments'])
  })

  it('plays a step delayed by a slow one on its process late, if the run has not ended', async () => {
    const { clock, run, started, release } = play([
      step(0.1, 'relay'),
      step(0.5, 'relay'),
      step(0.9, 'inventory'),
    ])
    await clock.advance(7_000)
    expect(started).toEqual([{ target: 'relay', at: 1_000 }])
    release[0]!()
    await clock.advance(0)
    expect(started.at(-1)).toEqual({ target: 'relay', at: 7_000 })
    release[1]!()
    await clock.advance(2_000)
    expect(started.at(-1)).toEqual({ target: 'inventory', at: 9_000 })
    release[2]!()
    await clock.advance(1_000)
    await run.ended
    await run.stepsDone
  })

  it("does not delay another process's steps behind a slow one", async () => {
    const { clock, run, started, release } = play([step(0.1, 'payments'), step(0.5, 'relay')])
    await clock.advance(5_000)
    expect(started).toEqual([
      { target: 'payments', at: 1_000 },
      { target: 'relay', at: 5_000 },
    ])
    for (const done of release) done()
    await clock.advance(5_000)
    await run.stepsDone
  })

  it('ends as soon as it is stopped, playing nothing more', async () => {
    const stop = new AbortController()
    const { clock, run, started } = play([step(0.5, 'relay')], 10_000, stop.signal)
    await clock.advance(1_000)
    stop.abort()
    await run.ended
    await run.stepsDone
    await clock.advance(10_000)
    expect(started).toEqual([])
  })

  it('with no duration plays no step and ends only when stopped', async () => {
    const stop = new AbortController()
    const { clock, run, started } = play([step(0.1, 'relay')], 0, stop.signal)
    const ended = flag(run.ended)
    await clock.advance(1_000_000)
    expect(ended.done).toBe(false)
    stop.abort()
    await run.ended
    await run.stepsDone
    expect(started).toEqual([])
  })
})
