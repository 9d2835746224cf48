import { existsSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { orderSlowestFirst, slowestTestFiles } from '../support/slowest-first-sequencer.js'

describe('slowest-first sequencer', () => {
  it('names only test files that exist, once each', () => {
    for (const file of slowestTestFiles) expect(existsSync(file), file).toBe(true)
    expect(new Set(slowestTestFiles).size).toBe(slowestTestFiles.length)
  })

  it('puts the listed files first in list order and keeps the others in their order', () => {
    const [slowest, second] = slowestTestFiles as [string, string]
    const ordered = orderSlowestFirst(
      ['test/b.test.ts', second, 'test/a.test.ts', slowest],
      (f) => f,
    )
    expect(ordered).toEqual([slowest, second, 'test/b.test.ts', 'test/a.test.ts'])
  })
})
