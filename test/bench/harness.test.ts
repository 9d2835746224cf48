import { describe, expect, it } from 'vitest'
import { balancedOrder } from '../../bench/lib/harness.js'

describe('balancedOrder', () => {
  for (const count of [1, 2, 3, 4, 5, 6, 7]) {
    it(`gives each ordered pair of ${count} subjects one place as neighbours, equally often`, () => {
      const cycle = count % 2 === 0 ? count : 2 * count
      const pairs = new Map<string, number>()
      for (let round = 0; round < cycle; round++) {
        const order = balancedOrder(count, round)
        expect([...order].sort((a, b) => a - b)).toEqual(Array.from({ length: count }, (_, i) => i))
        for (let i = 1; i < order.length; i++) {
          const key = `${order[i - 1]}>${order[i]}`
          pairs.set(key, (pairs.get(key) ?? 0) + 1)
        }
      }
      // Every ordered pair of distinct subjects, each the same number of times.
      expect(pairs.size).toBe(count * (count - 1))
      expect(new Set(pairs.values()).size).toBeLessThanOrEqual(1)
    })
  }

  it('repeats its cycle', () => {
    expect(balancedOrder(4, 5)).toEqual(balancedOrder(4, 1))
    expect(balancedOrder(3, 7)).toEqual(balancedOrder(3, 1))
  })

  it('refuses a count below one', () => {
    expect(() => balancedOrder(0, 0)).toThrow(RangeError)
  })
})
