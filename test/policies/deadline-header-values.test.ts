import { describe, expect, it } from 'vitest'
import {
  DEADLINE_HEADER,
  deadlineFromHeaders,
  deadlineHeaderValue,
  MAX_DEADLINE_HEADER_MS,
  withDeadline,
} from '../../src/policies/deadline.js'
import { ManualClock } from '../../src/testing/manual-clock.js'

// Values at the edges of the deadline header: digit strings longer than a double holds exactly,
// and budgets the sender cannot write as plain digits.

describe('a long deadline header value', () => {
  it('is a huge budget, capped like any other, not a malformed one', () => {
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '999999999999999' })).toBe(300_000)
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '9999999999999996' })).toBe(300_000)
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '9'.repeat(400) })).toBe(300_000)
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: `0${'9'.repeat(30)}` }, { maxMs: 1_000 })).toBe(
      1_000,
    )
    // A defaultMs shorter than the cap is no reason to cut a caller who sent a long budget.
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '1'.repeat(20) }, { defaultMs: 10 })).toBe(
      300_000,
    )
  })

  it('without a cap is the largest budget a header carries, and a long negative one is spent', () => {
    const uncapped = { maxMs: Number.POSITIVE_INFINITY }
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '9'.repeat(400) }, uncapped)).toBe(
      MAX_DEADLINE_HEADER_MS,
    )
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: `-${'9'.repeat(400)}` })).toBe(
      -MAX_DEADLINE_HEADER_MS,
    )
  })

  it('still refuses what is not all digits', () => {
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: `${'9'.repeat(20)}x` })).toBeUndefined()
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '1e300' })).toBeUndefined()
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '-' })).toBeUndefined()
  })
})

describe('deadlineHeaderValue', () => {
  it('never writes a budget a hop cannot read back: huge ones are clamped, Infinity sends nothing', async () => {
    const clock = new ManualClock(1_000)
    for (const ms of [1e300, 2 ** 60, MAX_DEADLINE_HEADER_MS + 1]) {
      const value = await withDeadline(ms, () => deadlineHeaderValue(), { clock })
      expect(value).toBe(String(MAX_DEADLINE_HEADER_MS))
      expect(value).toMatch(/^\d{1,15}$/)
    }
    expect(await withDeadline(MAX_DEADLINE_HEADER_MS, () => deadlineHeaderValue(), { clock })).toBe(
      '999999999999999',
    )
    expect(
      await withDeadline(Number.POSITIVE_INFINITY, () => deadlineHeaderValue(), { clock }),
    ).toBeUndefined()
  })
})
