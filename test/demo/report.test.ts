import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  type BreakerTransition,
  type BreakerVariantResult,
  type BulkheadVariantResult,
  concludeBreaker,
  concludeBulkhead,
  concludeJitter,
  concludeTimeout,
  type JitterVariantResult,
  renderFooter,
  renderScenario,
  renderTable,
  type TimeoutScenarioResult,
  transitionPath,
  type VariantResult,
  wrap,
} from '../../src/demo/policies/index.js'
import type { CircuitState } from '../../src/index.js'

function variant(overrides: Partial<VariantResult> = {}): VariantResult {
  return {
    label: 'v',
    calls: 100,
    successes: 100,
    failures: 0,
    fastFailures: 0,
    retries: 0,
    load: 100,
    p50Ms: 5,
    p99Ms: 10,
    ...overrides,
  }
}

function jitterVariant(peak: number, shed: number): JitterVariantResult {
  return { ...variant(), jitter: 'none', peak, shed }
}

function bulkheadVariant(bcSuccesses: number, bcP99Ms: number): BulkheadVariantResult {
  const bc = variant({ successes: bcSuccesses, failures: 100 - bcSuccesses, p99Ms: bcP99Ms })
  return { label: 'x', byDownstream: { B: bc, C: bc, D: variant({ p99Ms: 500 }) } }
}

function walk(states: readonly CircuitState[], closedAtMs: number): BreakerTransition[] {
  return states.slice(1).map((to, i) => ({
    from: states[i]!,
    to,
    afterRecoveryMs: i === states.length - 2 ? closedAtMs : -100 + i,
  }))
}

function breakerVariant(
  loadWhileDown: number,
  fastFailures: number,
  transitions: BreakerTransition[],
): BreakerVariantResult {
  return { ...variant({ fastFailures }), loadWhileDown, transitions }
}

describe('renderTable', () => {
  it('aligns text left and numbers right, two spaces apart', () => {
    expect(
      renderTable(
        [{ header: 'name' }, { header: 'n', right: true }, { header: 'p99', right: true }],
        [
          ['a', '1', '5 ms'],
          ['bbbbbb', '22', '1000 ms'],
        ],
      ),
    ).toEqual(['name     n      p99', 'a        1     5 ms', 'bbbbbb  22  1000 ms'])
  })

  it('puts every cell of a right-aligned last column at the same end', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.string({ maxLength: 12 }), fc.nat({ max: 100_000 })), {
          maxLength: 10,
        }),
        (rows) => {
          const lines = renderTable(
            [{ header: 'label' }, { header: 'value', right: true }],
            rows.map(([label, value]) => [label.trim() || 'x', String(value)]),
          )
          expect(new Set(lines.map((line) => line.length)).size).toBe(1)
        },
      ),
    )
  })
})

describe('wrap', () => {
  it('keeps every word in order and lines within the width, units with their numbers', () => {
    fc.assert(
      fc.property(
        fc.array(fc.stringMatching(/^[a-z0-9]{1,12}$/), { maxLength: 40 }),
        fc.integer({ min: 20, max: 100 }),
        (words, width) => {
          const lines = wrap(words.join(' '), width, '  ', '    ')
          for (const line of lines) expect(line.length).toBeLessThanOrEqual(width)
          expect(lines.join(' ').split(/\s+/).filter(Boolean)).toEqual(words)
        },
      ),
    )
    expect(wrap('wait 100 ms now', 9, '', '')).toEqual(['wait', '100 ms', 'now'])
  })
})

describe('transitionPath', () => {
  it('folds repeated failed probes', () => {
    const states: CircuitState[] = ['closed', 'open', 'half-open', 'open', 'half-open', 'open']
    expect(transitionPath(walk([...states, 'half-open', 'closed'], 5))).toBe(
      'closed -> open -> (half-open -> open) x2 -> half-open -> closed',
    )
    expect(transitionPath(walk(['closed', 'open', 'half-open', 'closed'], 5))).toBe(
      'closed -> open -> half-open -> closed',
    )
    expect(transitionPath([])).toBe('no transitions')
  })
})

describe('conclusions are computed from the numbers', () => {
  it('jitter: holds only when the peak and the shed requests both drop', () => {
    expect(concludeJitter(jitterVariant(80, 150), jitterVariant(20, 3), 10).holds).toBe(true)
    const reversed = concludeJitter(jitterVariant(20, 3), jitterVariant(80, 150), 10)
    expect(reversed.holds).toBe(false)
    expect(reversed.text).toMatch(/^NOT shown/)
    expect(reversed.text).toContain('peak 20 -> 80')
    expect(concludeJitter(jitterVariant(80, 3), jitterVariant(20, 3), 10).holds).toBe(false)
  })

  it('bulkhead: holds only when B and C succeed more and wait less', () => {
    expect(concludeBulkhead(bulkheadVariant(50, 100), bulkheadVariant(100, 7)).holds).toBe(true)
    const reversed = concludeBulkhead(bulkheadVariant(100, 7), bulkheadVariant(50, 100))
    expect(reversed.holds).toBe(false)
    expect(reversed.text).toMatch(/^NOT shown/)
    expect(concludeBulkhead(bulkheadVariant(50, 7), bulkheadVariant(100, 100)).holds).toBe(false)
  })

  it('timeout: holds only when the short timeout has the lower p99', () => {
    const long = variant({ p99Ms: 1_000 })
    const short = variant({ p99Ms: 60 })
    expect(concludeTimeout(long, short).holds).toBe(true)
    const reversed = concludeTimeout(short, long)
    expect(reversed.holds).toBe(false)
    expect(reversed.text).toMatch(/^NOT shown/)
    expect(reversed.text).toContain('p99 60 ms -> 1 s')
  })

  it('timeout: does not hold when the lower p99 comes from calls failing sooner', () => {
    // Retries are there to turn the hung requests into successes: a short timeout that loses
    // calls has a low p99 only because its failures are quick.
    const long = variant({ p99Ms: 1_000, successes: 95, failures: 5 })
    const losing = concludeTimeout(long, variant({ p99Ms: 300, successes: 34, failures: 66 }))
    expect(losing.holds).toBe(false)
    expect(losing.text).toMatch(/^NOT shown/)
    expect(losing.text).toContain('successes 95 -> 34 of 100')
    expect(concludeTimeout(long, variant({ p99Ms: 60, successes: 100 })).holds).toBe(true)
  })

  it('breaker: holds only with less load, fast failures, and a close after recovery', () => {
    const path: CircuitState[] = ['closed', 'open', 'half-open', 'closed']
    const plain = breakerVariant(300, 0, [])
    expect(concludeBreaker(plain, breakerVariant(10, 100, walk(path, 30))).holds).toBe(true)
    const noRelief = concludeBreaker(plain, breakerVariant(300, 100, walk(path, 30)))
    expect(noRelief.holds).toBe(false)
    expect(noRelief.text).toMatch(/^NOT shown/)
    const neverClosed = concludeBreaker(
      plain,
      breakerVariant(10, 100, walk(['closed', 'open'], -50)),
    )
    expect(neverClosed.holds).toBe(false)
    expect(neverClosed.text).toContain('had not closed again')
  })
})

describe('renderScenario and renderFooter', () => {
  const result = (holds: boolean): TimeoutScenarioResult => ({
    scenario: 'timeout',
    title: 'A 500 ms timeout + retries beats one 10 s timeout at p99',
    setup: ['The dependency answers in 2-8 ms.'],
    timeScale: 0.1,
    hangs: [15, 15],
    variants: [variant({ label: 'one 1 s timeout' }), variant({ label: '50 ms timeout x3' })],
    conclusion: { holds, text: holds ? 'It won.' : 'NOT shown by this run.' },
  })

  it('marks a claim the numbers did not show', () => {
    const shown = renderScenario(result(true), 3)
    expect(shown[0]).toBe(
      '3. A 500 ms timeout + retries beats one 10 s timeout at p99 (times x0.1)',
    )
    expect(shown.at(-1)).toBe('   => It won.')
    expect(renderScenario(result(false), 3).at(-1)).toBe('   !! NOT shown by this run.')
    expect(renderFooter([result(true), result(false)], 9_500, 12).join(' ')).toBe(
      'Done in 9.5 s (event-loop delay p99 12 ms): 1 of 2 claims shown by the numbers above; ' +
        'see the lines marked !!.',
    )
    expect(renderFooter([result(true)], 9_500, 0)).toEqual([
      'Done in 9.5 s (event-loop delay p99 <1 ms): 1 of 1 claims shown by the numbers above.',
    ])
  })
})
