// The checker's other half: with the inbox's deduplication switched off (`--break inbox`) and
// notifications losing half of its acknowledgements, the broker's redeliveries send second
// emails: the checker must count them from the notifications database and the demo must exit
// 1. (checker.test.ts has the control run with every safety net on.)
//
// The run waits until acknowledgements of email messages were lost, and the demo waits for
// their redeliveries before it judges: each one is a second email, whatever the machine's load.
import { beforeAll, describe, expect, it } from 'vitest'
import { ensureShopBuilt, invariantsOf, runUnderLostReplies } from './support.js'

beforeAll(() => {
  ensureShopBuilt()
})

describe('the shop demo invariant checker', () => {
  it('reports orders with two emails and exits 1 when the inbox does not deduplicate', async () => {
    const { code, stdout, summary } = await runUnderLostReplies(
      ['--break', 'inbox'],
      (p) => p.acksLost >= 2,
    )
    expect(summary, stdout).toBeDefined()
    const s = summary!
    expect(s.quiescent, stdout).toBe(true)
    expect(s.figures.emails.duplicated, stdout).toBeGreaterThan(0)
    expect(invariantsOf(s)['emails per finished order']).toBe(false)
    // Only that net was off: payments still charged each order once.
    expect(s.figures.duplicateCharges).toBe(0)
    expect(s.ok).toBe(false)
    expect(stdout).toMatch(/emails per finished order +\d+ orders got 2\+ +1 +BROKEN/)
    expect(code).toBe(1)
  }, 120_000)
})
