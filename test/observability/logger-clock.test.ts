// A log line's time comes from the injected clock. A clock whose time no Date can hold (NaN, a
// ManualClock moved past ±8.64e15 ms) or whose now() throws must not make the log call throw:
// logging happens in error paths, where a throw would replace the real error.
import { describe, expect, it } from 'vitest'
import type { Clock } from '../../src/core/clock.js'
import { createJsonLogger } from '../../src/observability/logger.js'

function clockAt(now: () => number): Clock {
  return { now, setTimeout: () => 0, clearTimeout: () => {} }
}

describe('createJsonLogger with a clock whose time is not a date', () => {
  it('writes the line with time "Invalid Date" instead of throwing', () => {
    const broken = () => {
      throw new Error('clock broke')
    }
    for (const now of [() => Number.NaN, () => 1e20, () => Number.POSITIVE_INFINITY, broken]) {
      const lines: string[] = []
      const log = createJsonLogger({ output: { write: (t) => lines.push(t) }, clock: clockAt(now) })
      expect(() => log.error('request failed', { status: 500 })).not.toThrow()
      expect(lines.map((l) => JSON.parse(l))).toEqual([
        { level: 'error', time: 'Invalid Date', msg: 'request failed', status: 500 },
      ])
    }
  })

  it('still writes a valid time as ISO 8601', () => {
    const lines: string[] = []
    const log = createJsonLogger({
      output: { write: (t) => lines.push(t) },
      clock: clockAt(() => 86_400_000),
    })
    log.info('x')
    expect(JSON.parse(lines[0]!).time).toBe('1970-01-02T00:00:00.000Z')
  })
})
