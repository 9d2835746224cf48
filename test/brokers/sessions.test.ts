// The reconnect loop in isolation, on a ManualClock. The sessions here are plain objects that
// implement our own Session interface; the real connections are covered by the conformance
// suite against real servers.
import { AsyncLocalStorage } from 'node:async_hooks'
import { describe, expect, it } from 'vitest'
import { type Session, superviseSessions } from '../../src/brokers/sessions.js'
import { currentDeadline, withDeadline } from '../../src/policies/deadline.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

class FakeSession implements Session {
  readonly ended: Promise<unknown>
  closed = 0
  #end!: (reason: unknown) => void

  constructor() {
    this.ended = new Promise((resolve) => {
      this.#end = resolve
    })
  }

  lose(reason: unknown): void {
    this.#end(reason)
  }

  stopped = 0

  async stopReceiving(): Promise<void> {
    this.stopped++
  }

  async close(): Promise<void> {
    this.closed++
    this.#end(undefined)
  }
}

/**
 * An open() for superviseSessions that fails with 'still down' while failuresLeft is above zero
 * (counting it down), and otherwise opens a new FakeSession, kept in sessions in order.
 * onAttempt runs first on every call.
 */
function flakyOpener(onAttempt: () => void = () => {}) {
  const opener = {
    sessions: [] as FakeSession[],
    failuresLeft: 0,
    open: async (): Promise<FakeSession> => {
      onAttempt()
      if (opener.failuresLeft > 0) {
        opener.failuresLeft--
        throw new Error('still down')
      }
      const session = new FakeSession()
      opener.sessions.push(session)
      return session
    },
  }
  return opener
}

describe('superviseSessions', () => {
  it('fails when the first session cannot be opened', async () => {
    const clock = new ManualClock()
    await expect(
      superviseSessions({
        open: () => Promise.reject(new Error('refused')),
        clock,
        reconnectDelayMs: 100,
        maxReconnectDelayMs: 1_000,
        onError: () => {},
      }),
    ).rejects.toThrow('refused')
  })

  it('reopens a lost session with exponential backoff capped at the maximum', async () => {
    const clock = new ManualClock()
    const attempts: number[] = []
    const opener = flakyOpener(() => attempts.push(clock.now()))
    const { sessions } = opener
    const errors: unknown[] = []
    const subscription = await superviseSessions({
      open: opener.open,
      clock,
      reconnectDelayMs: 100,
      maxReconnectDelayMs: 500,
      onError: (error) => errors.push(error),
    })
    expect(attempts).toEqual([0])

    opener.failuresLeft = 4
    sessions[0]!.lose(new Error('connection lost'))
    await clock.advance(0)
    expect(sessions[0]!.closed).toBe(1)
    await clock.advance(5_000)
    // Waits of 100, 200, 400, 500 (capped), 500 between the five attempts.
    expect(attempts).toEqual([0, 100, 300, 700, 1_200, 1_700])
    expect(sessions).toHaveLength(2)
    expect(errors.map((e) => (e as Error).message)).toEqual([
      'connection lost',
      'still down',
      'still down',
      'still down',
      'still down',
    ])

    // Backoff starts over after a success.
    sessions[1]!.lose(new Error('lost again'))
    await clock.advance(100)
    expect(attempts.at(-1)).toBe(5_100)
    expect(sessions).toHaveLength(3)

    await subscription.close()
    expect(sessions[2]!.closed).toBe(1)
  })

  it('stops reconnecting when closed during the backoff', async () => {
    const clock = new ManualClock()
    const session = new FakeSession()
    let opens = 0
    const subscription = await superviseSessions({
      open: async () => {
        opens++
        if (opens > 1) throw new Error('should not reopen')
        return session
      },
      clock,
      reconnectDelayMs: 1_000,
      maxReconnectDelayMs: 1_000,
      onError: () => {},
    })
    session.lose(new Error('lost'))
    await clock.advance(10)
    await subscription.close()
    await clock.advance(10_000)
    expect(opens).toBe(1)
    expect(clock.pendingTimers).toBe(0)
  })

  it('stops the current session receiving and opens no new one after a loss until closed', async () => {
    const clock = new ManualClock()
    const sessions: FakeSession[] = []
    const errors: unknown[] = []
    const subscription = await superviseSessions({
      open: async () => {
        const session = new FakeSession()
        sessions.push(session)
        return session
      },
      clock,
      reconnectDelayMs: 100,
      maxReconnectDelayMs: 100,
      onError: (error) => errors.push(error),
    })
    await subscription.stopReceiving()
    expect(sessions[0]!.stopped).toBe(1)
    expect(sessions[0]!.closed).toBe(0)
    // Lost while running handlers finish: closed, reported, not replaced.
    sessions[0]!.lose(new Error('lost'))
    await clock.advance(10_000)
    expect(sessions).toHaveLength(1)
    expect(sessions[0]!.closed).toBe(1)
    expect(errors).toHaveLength(1)
    await subscription.close()
    expect(clock.pendingTimers).toBe(0)
  })

  it('keeps reconnecting when the onError listener throws, instead of ending the loop with an unhandled rejection', async () => {
    const clock = new ManualClock()
    const opener = flakyOpener()
    const { sessions } = opener
    let reported = 0
    const subscription = await superviseSessions({
      open: opener.open,
      clock,
      reconnectDelayMs: 100,
      maxReconnectDelayMs: 100,
      // The application's listener (an adapter's onError option) is not ours to trust.
      onError: () => {
        reported++
        throw new Error('listener failed')
      },
    })
    opener.failuresLeft = 1
    sessions[0]!.lose(new Error('connection lost'))
    await clock.advance(1_000)
    // Both the loss and the failed attempt were reported, and the next attempt connected.
    expect(reported).toBe(2)
    expect(sessions).toHaveLength(2)
    await subscription.close()
    expect(sessions[1]!.closed).toBe(1)
  })

  it("opens every session (and reports its losses) in its own context, not the subscriber's caller's", async () => {
    const clock = new ManualClock()
    // An application's per-request store, and a deadline around its subscribe() call.
    const request = new AsyncLocalStorage<string>()
    const contexts: Array<{ what: string; deadline: unknown; request: string | undefined }> = []
    const seen = (what: string): void => {
      contexts.push({ what, deadline: currentDeadline(), request: request.getStore() })
    }
    const opener = flakyOpener(() => seen('open'))
    const subscription = await request.run('request-1', () =>
      withDeadline(
        100,
        () =>
          superviseSessions({
            open: opener.open,
            clock,
            reconnectDelayMs: 100,
            maxReconnectDelayMs: 100,
            onError: () => seen('error'),
          }),
        { clock },
      ),
    )
    await clock.advance(1_000)
    opener.sessions[0]!.lose(new Error('connection lost'))
    await clock.advance(100)
    expect(opener.sessions).toHaveLength(2)
    const none = { deadline: undefined, request: undefined }
    expect(contexts).toEqual([
      { what: 'open', ...none },
      { what: 'error', ...none },
      { what: 'open', ...none },
    ])
    await subscription.close()
  })
})
