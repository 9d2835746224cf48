import { spawn } from 'node:child_process'
import { EventEmitter } from 'node:events'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { AbortedError, InvalidOptionError } from '../../src/core/errors.js'
import { type RunOutcome, runUntilSignal } from '../../src/process/index.js'
import { flushJobs, ManualClock } from '../../src/testing/manual-clock.js'

/** A controllable service: records calls; stop() resolves when the test says so. */
function service() {
  const calls: string[] = []
  let finishStop: () => void = () => {}
  let endItself: (error?: unknown) => void = () => {}
  const done = new Promise<void>((resolve, reject) => {
    endItself = (error) => (error === undefined ? resolve() : reject(error))
  })
  return {
    calls,
    finishStop: () => finishStop(),
    endItself: (error?: unknown) => endItself(error),
    handle: {
      done,
      stop: () => {
        calls.push('stop')
        return new Promise<void>((resolve) => {
          finishStop = () => {
            calls.push('stopped')
            resolve()
          }
        })
      },
    },
  }
}

/** A start that ignores its abort signal (a connect that hangs) until `finish()`. */
function heldStart<T>(result: () => T) {
  let finish: () => void = () => {}
  return {
    finish: () => finish(),
    start: async () => {
      await new Promise<void>((resolve) => {
        finish = resolve
      })
      return result()
    },
  }
}

function track(promise: Promise<RunOutcome>) {
  const state: { outcome?: RunOutcome; error?: unknown } = {}
  promise.then(
    (o) => {
      state.outcome = o
    },
    (e: unknown) => {
      state.error = e
    },
  )
  return state
}

describe('runUntilSignal', () => {
  it('waits for SIGTERM, stops the service, and removes its listeners', async () => {
    const target = new EventEmitter()
    const clock = new ManualClock()
    const s = service()
    const signals: string[] = []
    const run = track(
      runUntilSignal(() => s.handle, {
        target,
        clock,
        onSignal: (signal, phase) => signals.push(`${signal}:${phase}`),
      }),
    )
    await flushJobs()
    expect(target.listenerCount('SIGTERM')).toBe(1)
    expect(target.listenerCount('SIGINT')).toBe(1)
    expect(s.calls).toEqual([])
    target.emit('SIGTERM', 'SIGTERM')
    await flushJobs()
    expect(s.calls).toEqual(['stop'])
    expect(run.outcome).toBeUndefined()
    s.finishStop()
    await flushJobs()
    expect(run.outcome).toEqual({ reason: 'signal', signal: 'SIGTERM', drain: 'complete' })
    expect(signals).toEqual(['SIGTERM:drain'])
    expect(target.listenerCount('SIGTERM')).toBe(0)
    expect(target.listenerCount('SIGINT')).toBe(0)
  })

  it('installs its listeners in the call itself, before its first await', async () => {
    // The CLI holds SIGTERM and SIGINT while it loads and lets go of them right after this call,
    // in the same turn: a listener installed a turn later would leave a gap.
    const target = new EventEmitter()
    const s = service()
    const run = track(runUntilSignal(() => s.handle, { target, clock: new ManualClock() }))
    expect(target.listenerCount('SIGTERM')).toBe(1)
    expect(target.listenerCount('SIGINT')).toBe(1)
    target.emit('SIGINT', 'SIGINT')
    await flushJobs()
    s.finishStop()
    await flushJobs()
    expect(run.outcome).toEqual({ reason: 'signal', signal: 'SIGINT', drain: 'complete' })
  })

  it('gives up on a drain that takes longer than drainTimeoutMs', async () => {
    const target = new EventEmitter()
    const clock = new ManualClock()
    const s = service()
    const run = track(runUntilSignal(() => s.handle, { target, clock, drainTimeoutMs: 1_000 }))
    await flushJobs()
    target.emit('SIGINT', 'SIGINT')
    await clock.advance(999)
    expect(run.outcome).toBeUndefined()
    await clock.advance(1)
    expect(run.outcome).toEqual({ reason: 'signal', signal: 'SIGINT', drain: 'timeout' })
    expect(clock.pendingTimers).toBe(0)
  })

  it('asks a drainTimeoutMs function at the first signal, for a bound that changed meanwhile', async () => {
    const target = new EventEmitter()
    const clock = new ManualClock()
    const s = service()
    let bound = 100
    let asked = 0
    const drainTimeoutMs = () => {
      asked++
      return bound
    }
    const run = track(runUntilSignal(() => s.handle, { target, clock, drainTimeoutMs }))
    await flushJobs()
    bound = 1_000 // a reload, say
    expect(asked).toBe(0)
    target.emit('SIGTERM', 'SIGTERM')
    await clock.advance(999)
    expect(run.outcome).toBeUndefined()
    await clock.advance(1)
    expect(run.outcome).toEqual({ reason: 'signal', signal: 'SIGTERM', drain: 'timeout' })
    expect(asked).toBe(1)
  })

  it("refuses a drainTimeoutMs function's answer out of range when it asks", async () => {
    const target = new EventEmitter()
    const clock = new ManualClock()
    const s = service()
    const run = track(runUntilSignal(() => s.handle, { target, clock, drainTimeoutMs: () => -1 }))
    await flushJobs()
    target.emit('SIGTERM', 'SIGTERM')
    await flushJobs()
    expect(run.error).toBeInstanceOf(InvalidOptionError)
    expect((run.error as Error).message).toContain('runUntilSignal.drainTimeoutMs')
  })

  it('a second signal during the drain forces the end', async () => {
    const target = new EventEmitter()
    const clock = new ManualClock()
    const s = service()
    const phases: string[] = []
    const run = track(
      runUntilSignal(() => s.handle, {
        target,
        clock,
        onSignal: (_signal, phase) => phases.push(phase),
      }),
    )
    await flushJobs()
    target.emit('SIGTERM', 'SIGTERM')
    await flushJobs()
    target.emit('SIGTERM', 'SIGTERM')
    await flushJobs()
    expect(run.outcome).toEqual({ reason: 'signal', signal: 'SIGTERM', drain: 'forced' })
    expect(phases).toEqual(['drain', 'force'])
    expect(s.calls).toEqual(['stop'])
  })

  it('a signal during start aborts its signal and stops the service once it is up', async () => {
    const target = new EventEmitter()
    const clock = new ManualClock()
    const s = service()
    let startSignal: AbortSignal | undefined
    let finishStart: () => void = () => {}
    const run = track(
      runUntilSignal(
        async (signal) => {
          startSignal = signal
          await new Promise<void>((resolve) => {
            finishStart = resolve
          })
          return s.handle
        },
        { target, clock },
      ),
    )
    await flushJobs()
    target.emit('SIGTERM', 'SIGTERM')
    await flushJobs()
    expect(startSignal?.aborted).toBe(true)
    expect(s.calls).toEqual([])
    finishStart()
    await flushJobs()
    expect(s.calls).toEqual(['stop'])
    s.finishStop()
    await flushJobs()
    expect(run.outcome).toEqual({ reason: 'signal', signal: 'SIGTERM', drain: 'complete' })
  })

  it('a second signal during start forces the end at once; the service is stopped once up', async () => {
    const target = new EventEmitter()
    const clock = new ManualClock()
    const s = service()
    const phases: string[] = []
    const held = heldStart(() => s.handle)
    const run = track(
      runUntilSignal(held.start, {
        target,
        clock,
        onSignal: (signal, phase) => phases.push(`${signal}:${phase}`),
      }),
    )
    await flushJobs()
    target.emit('SIGINT', 'SIGINT')
    await flushJobs()
    expect(run.outcome).toBeUndefined()
    // The user pressed Ctrl-C twice: the run does not wait for start any longer.
    target.emit('SIGINT', 'SIGINT')
    await flushJobs()
    expect(run.outcome).toEqual({ reason: 'signal', signal: 'SIGINT', drain: 'forced' })
    expect(phases).toEqual(['SIGINT:drain', 'SIGINT:force'])
    expect(target.listenerCount('SIGINT')).toBe(0)
    expect(clock.pendingTimers).toBe(0)
    // What start still brings up is stopped, not left running.
    held.finish()
    await flushJobs()
    expect(s.calls).toEqual(['stop'])
  })

  it('after a forced end during start, a start or stop failure is not unhandled', async () => {
    const target = new EventEmitter()
    const clock = new ManualClock()
    const unhandled: unknown[] = []
    const onUnhandled = (reason: unknown) => unhandled.push(reason)
    process.on('unhandledRejection', onUnhandled)
    try {
      const failingStart = heldStart((): never => {
        throw new Error('cannot connect')
      })
      const failing = track(runUntilSignal(failingStart.start, { target, clock }))
      const held = heldStart(() => ({ stop: () => Promise.reject(new Error('stop failed')) }))
      const failingStop = track(runUntilSignal(held.start, { target, clock }))
      await flushJobs()
      target.emit('SIGTERM', 'SIGTERM')
      target.emit('SIGTERM', 'SIGTERM')
      await flushJobs()
      expect(failing.outcome).toEqual({ reason: 'signal', signal: 'SIGTERM', drain: 'forced' })
      expect(failingStop.outcome).toEqual({ reason: 'signal', signal: 'SIGTERM', drain: 'forced' })
      failingStart.finish()
      held.finish()
      await flushJobs()
      await new Promise((resolve) => setImmediate(resolve))
      expect(unhandled).toEqual([])
    } finally {
      process.off('unhandledRejection', onUnhandled)
    }
  })

  it('a start that gives up on the abort is a clean shutdown; other start failures reject', async () => {
    const target = new EventEmitter()
    const clock = new ManualClock()
    const run = track(
      runUntilSignal(
        (signal) =>
          new Promise((_, reject) =>
            signal.addEventListener('abort', () => reject(new AbortedError(signal.reason))),
          ),
        { target, clock },
      ),
    )
    await flushJobs()
    target.emit('SIGTERM', 'SIGTERM')
    await flushJobs()
    expect(run.outcome).toEqual({ reason: 'signal', signal: 'SIGTERM', drain: 'complete' })

    const failing = track(
      runUntilSignal(() => Promise.reject(new Error('cannot connect')), { target, clock }),
    )
    await flushJobs()
    expect((failing.error as Error).message).toBe('cannot connect')
    expect(target.listenerCount('SIGTERM')).toBe(0)
  })

  it('a service that ends by itself is stopped; its failure rejects the run', async () => {
    const target = new EventEmitter()
    const clock = new ManualClock()
    const ok = service()
    const run = track(runUntilSignal(() => ok.handle, { target, clock }))
    await flushJobs()
    ok.endItself()
    await flushJobs()
    expect(ok.calls).toEqual(['stop'])
    ok.finishStop()
    await flushJobs()
    expect(run.outcome).toEqual({ reason: 'ended' })

    const bad = service()
    const failed = track(runUntilSignal(() => bad.handle, { target, clock }))
    await flushJobs()
    bad.endItself(new Error('relay crashed'))
    await flushJobs()
    bad.finishStop()
    await flushJobs()
    expect((failed.error as Error).message).toBe('relay crashed')
    expect(target.listenerCount('SIGTERM')).toBe(0)
  })

  it("rejects with a failed service's own error when its stop() fails too", async () => {
    // A service that crashed often cannot stop cleanly either (its connection is gone): the
    // crash says what happened, the stop's failure only that it happened.
    const target = new EventEmitter()
    const clock = new ManualClock()
    let crash: (error: unknown) => void = () => {}
    const done = new Promise<void>((_, reject) => {
      crash = reject
    })
    const failed = track(
      runUntilSignal(
        () => ({
          done,
          stop: () => Promise.reject(new Error('cannot stop: not connected')),
        }),
        { target, clock },
      ),
    )
    await flushJobs()
    crash(new Error('relay crashed: connection lost'))
    await flushJobs()
    expect((failed.error as Error).message).toBe('relay crashed: connection lost')
    expect(target.listenerCount('SIGTERM')).toBe(0)
  })

  it('a signal bounds the stop of a service that ended by itself: drain timeout, then a second signal', async () => {
    const target = new EventEmitter()
    const clock = new ManualClock()
    const hung = service()
    const run = track(runUntilSignal(() => hung.handle, { target, clock, drainTimeoutMs: 1_000 }))
    await flushJobs()
    hung.endItself()
    await flushJobs()
    expect(hung.calls).toEqual(['stop'])
    // stop() hangs. Without a signal the run waits for it (the service is shutting itself down).
    await clock.advance(5_000)
    expect(run.outcome).toBeUndefined()
    target.emit('SIGTERM', 'SIGTERM')
    await clock.advance(999)
    expect(run.outcome).toBeUndefined()
    await clock.advance(1)
    expect(run.outcome).toEqual({ reason: 'signal', signal: 'SIGTERM', drain: 'timeout' })
    expect(clock.pendingTimers).toBe(0)
    expect(target.listenerCount('SIGTERM')).toBe(0)

    const forced = service()
    const second = track(runUntilSignal(() => forced.handle, { target, clock }))
    await flushJobs()
    forced.endItself()
    await flushJobs()
    target.emit('SIGINT', 'SIGINT')
    target.emit('SIGINT', 'SIGINT')
    await flushJobs()
    expect(second.outcome).toEqual({ reason: 'signal', signal: 'SIGINT', drain: 'forced' })
    expect(clock.pendingTimers).toBe(0)

    // A service that failed still rejects with its failure, even when its stop was cut short.
    const crashed = service()
    const third = track(runUntilSignal(() => crashed.handle, { target, clock }))
    await flushJobs()
    crashed.endItself(new Error('relay crashed'))
    await flushJobs()
    target.emit('SIGTERM', 'SIGTERM')
    target.emit('SIGTERM', 'SIGTERM')
    await flushJobs()
    expect((third.error as Error).message).toBe('relay crashed')
    expect(target.listenerCount('SIGTERM')).toBe(0)
  })

  it('a throwing onSignal still starts the drain, and a second signal still forces', async () => {
    // A bug in the logging callback surfaces (process: an uncaughtException) but must not
    // swallow the signal: with an uncaughtException handler the process would never stop.
    const target = new EventEmitter()
    const clock = new ManualClock()
    const s = service()
    const run = track(
      runUntilSignal(() => s.handle, {
        target,
        clock,
        onSignal: () => {
          throw new Error('logger broke')
        },
      }),
    )
    await flushJobs()
    expect(() => target.emit('SIGTERM', 'SIGTERM')).toThrow('logger broke')
    await flushJobs()
    expect(s.calls).toEqual(['stop'])
    expect(() => target.emit('SIGTERM', 'SIGTERM')).toThrow('logger broke')
    await flushJobs()
    expect(run.outcome).toEqual({ reason: 'signal', signal: 'SIGTERM', drain: 'forced' })
    expect(target.listenerCount('SIGTERM')).toBe(0)
  })

  it('takes a stop() that returns no promise as done at once', async () => {
    // `stop: () => server.close()` returns the server, not a promise: that is a finished stop,
    // not a TypeError after the drain has begun.
    const target = new EventEmitter()
    const calls: string[] = []
    for (const result of [undefined, { closed: true }]) {
      const run = track(
        runUntilSignal(
          () => ({
            stop: () => {
              calls.push('stop')
              return result as unknown as Promise<void>
            },
          }),
          { target, clock: new ManualClock() },
        ),
      )
      await flushJobs()
      target.emit('SIGTERM', 'SIGTERM')
      await flushJobs()
      expect(run.error).toBeUndefined()
      expect(run.outcome).toEqual({ reason: 'signal', signal: 'SIGTERM', drain: 'complete' })
    }
    expect(calls).toEqual(['stop', 'stop'])
    expect(target.listenerCount('SIGTERM')).toBe(0)
  })

  it('refuses a done that is not a promise, naming it, and stops the service it got', async () => {
    const target = new EventEmitter()
    const calls: string[] = []
    const run = track(
      runUntilSignal(
        () => ({
          done: true as unknown as Promise<void>,
          stop: async () => {
            calls.push('stop')
          },
        }),
        { target, clock: new ManualClock() },
      ),
    )
    await flushJobs()
    expect(run.error).toBeInstanceOf(InvalidOptionError)
    expect((run.error as InvalidOptionError).option).toBe('start().done')
    expect(calls).toEqual(['stop'])
    expect(target.listenerCount('SIGTERM')).toBe(0)
  })

  it('refuses bad options, naming them', async () => {
    await expect(runUntilSignal(() => service().handle, { drainTimeoutMs: -1 })).rejects.toThrow(
      /drainTimeoutMs/,
    )
    await expect(runUntilSignal(() => service().handle, { signals: [] })).rejects.toThrow(/signals/)
  })

  it('refuses a misspelt option before starting, instead of draining with the default', async () => {
    const target = new EventEmitter()
    let started = 0
    const run = runUntilSignal(
      () => {
        started++
        return service().handle
      },
      { target, drainTimeoutMS: 1_000 } as never,
    )
    await expect(run).rejects.toMatchObject({
      code: 'INVALID_OPTION',
      option: 'runUntilSignal.drainTimeoutMS',
    })
    expect(started).toBe(0)
    expect(target.listenerCount('SIGTERM')).toBe(0)
  })

  it('refuses unknown, uncatchable and repeated signals before listening for any', async () => {
    const target = new EventEmitter()
    const started: string[] = []
    const start = () => {
      started.push('start')
      return service().handle
    }
    for (const signals of [
      // A typo would leave SIGTERM to its default action, silently.
      ['SIGTERM', 'SIGTRM'],
      // process.on('SIGKILL') throws EINVAL, after SIGTERM's listener was installed for good.
      ['SIGTERM', 'SIGKILL'],
      ['SIGSTOP'],
      // One SIGTERM would call the listener twice: a drain forced at once.
      ['SIGTERM', 'SIGTERM'],
    ] as NodeJS.Signals[][]) {
      const run = track(runUntilSignal(start, { target, signals, clock: new ManualClock() }))
      await flushJobs()
      expect(run.error, signals.join()).toBeInstanceOf(InvalidOptionError)
      expect((run.error as InvalidOptionError).option).toBe('runUntilSignal.signals')
      expect(target.eventNames()).toEqual([])
    }
    expect(started).toEqual([])
  })

  it('keeps a real process alive until SIGTERM, then drains and exits 0', async () => {
    const fixture = fileURLToPath(new URL('./fixtures/sleeper.ts', import.meta.url))
    const child = spawn(process.execPath, ['--import', 'tsx', fixture], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    let err = ''
    child.stdout.setEncoding('utf8').on('data', (c: string) => {
      out += c
    })
    child.stderr.setEncoding('utf8').on('data', (c: string) => {
      err += c
    })
    const exited = new Promise<number | null>((resolve) =>
      child.once('exit', (code) => resolve(code)),
    )
    const deadline = Date.now() + 20_000
    while (!out.includes('running') && Date.now() < deadline && child.exitCode === null)
      await new Promise((r) => setTimeout(r, 20))
    expect(out, err).toContain('running')
    // Nothing but the helper keeps this process alive: it must still be here.
    await new Promise((r) => setTimeout(r, 200))
    expect(child.exitCode).toBeNull()
    child.kill('SIGTERM')
    expect(await exited).toBe(0)
    expect(out.trim().split('\n')).toEqual([
      'running',
      'stopping',
      'stopped',
      'outcome signal SIGTERM complete',
    ])
  })
})
