// One line per window at most, with how many were not logged since; the window is read from the
// injected clock, never from real time.
import { describe, expect, it } from 'vitest'
import type { LogFields } from '../../src/observability/logger.js'
import { RateLimitedLog } from '../../src/proxy/rate-limited-log.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

function recorded(clock: ManualClock) {
  const lines: LogFields[] = []
  const log = new RateLimitedLog(clock, (fields) => lines.push(fields))
  return { lines, log }
}

describe('RateLimitedLog', () => {
  it('logs the first event at once, without a suppressed count', () => {
    const { lines, log } = recorded(new ManualClock(0))
    log.log({ code: 'EMFILE' })
    expect(lines).toEqual([{ code: 'EMFILE' }])
  })

  it('counts the events of the next 10 s, reports them on the first line after, then anew', async () => {
    const clock = new ManualClock(0)
    const { lines, log } = recorded(clock)
    log.log({ n: 1 })
    log.log({ n: 2 })
    await clock.advance(9_999)
    log.log({ n: 3 })
    expect(lines).toEqual([{ n: 1 }])
    await clock.advance(1)
    log.log({ n: 4 })
    expect(lines).toEqual([{ n: 1 }, { n: 4, suppressed: 2 }])
    await clock.advance(10_000)
    log.log({ n: 5 })
    expect(lines).toEqual([{ n: 1 }, { n: 4, suppressed: 2 }, { n: 5 }])
  })
})
