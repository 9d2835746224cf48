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

describe('a deadline header sent more than once', () => {
  it('gives the smallest of its valid values, joined by node:http or fetch or as an array', () => {
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '100, 50' })).toBe(50)
    expect(
      deadlineFromHeaders(
        new Headers([
          [DEADLINE_HEADER, '100'],
          [DEADLINE_HEADER, '50'],
        ]),
      ),
    ).toBe(50)
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: ['100', '50'] })).toBe(50)
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: ['100', '70, 60', '80'] })).toBe(60)
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '100,-5' })).toBe(-5)
    // Still capped, whatever the order.
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '900000, 600000' })).toBe(300_000)
  })

  it('skips the malformed values, and ignores the header when none is valid', () => {
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: 'soon, 70' }, { defaultMs: 500 })).toBe(70)
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: '70, , 1e3' }, { defaultMs: 500 })).toBe(70)
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: 'soon, later' }, { defaultMs: 500 })).toBe(500)
    expect(deadlineFromHeaders({ [DEADLINE_HEADER]: ', ' })).toBeUndefined()
  })

  it('reads grpc-timeout the same way, and the tighter of the two headers still holds', () => {
    expect(deadlineFromHeaders({ 'grpc-timeout': '2S, 100m' })).toBe(100)
    expect(deadlineFromHeaders({ 'grpc-timeout': ['1x', '3S'] })).toBe(3_000)
    expect(deadlineFromHeaders({ 'grpc-timeout': '2S, 1S', [DEADLINE_HEADER]: '1500, 4000' })).toBe(
      1_000,
    )
  })
})
