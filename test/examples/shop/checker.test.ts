// The invariant checker proves nothing unless it fails on a broken system. With the payments
// idempotency switched off (`--break payments-idempotency`) and payments losing half of its
// replies after charging, the retries charge twice: the checker must count the duplicates from
// the payments database and the demo must exit 1. The same faults with every safety net on are
// the control: replies and acknowledgements are lost (retries, redeliveries), and nothing is
// charged or sent twice. checker-inbox.test.ts breaks the inbox.
//
// Each run waits for the faults to have happened (counted by the services themselves) before it
// stops the demo, so a loaded machine cannot turn the run into one without faults.
import { beforeAll, describe, expect, it } from 'vitest'
import { ensureShopBuilt, invariantsOf, runUnderLostReplies } from './support.js'

beforeAll(() => {
  ensureShopBuilt()
})

describe('the shop demo invariant checker', () => {
  it('reports duplicate charges and exits 1 when payments idempotency is switched off', async () => {
    const { code, stdout, summary } = await runUnderLostReplies(
      ['--break', 'payments-idempotency'],
      (p) => p.repliesLost >= 2 && p.paymentRetries >= 2,
    )
    expect(summary, stdout).toBeDefined()
    expect(summary!.quiescent, stdout).toBe(true)
    expect(summary!.figures.duplicateCharges, stdout).toBeGreaterThan(0)
    expect(invariantsOf(summary!)['duplicate charges']).toBe(false)
    expect(summary!.ok).toBe(false)
    expect(stdout).toMatch(/duplicate charges +\d+ +0 +BROKEN/)
    expect(stdout).toMatch(/INVARIANTS BROKEN/)
    expect(code).toBe(1)
  }, 120_000)

  it('finds none under the same faults with every safety net on', async () => {
    const { code, stdout, summary } = await runUnderLostReplies(
      [],
      (p) => p.paymentRetries >= 2 && p.acksLost >= 2,
    )
    expect(summary, stdout).toBeDefined()
    const s = summary!
    expect(s.quiescent, stdout).toBe(true)
    expect(s.figures.duplicateCharges).toBe(0)
    expect(s.figures.emails.duplicated).toBe(0)
    expect(s.ok, stdout).toBe(true)
    expect(code).toBe(0)
    // The faults were absorbed: charges retried with their key, and every email message whose
    // acknowledgement was lost came again and was recognised by the inbox.
    expect(s.patterns.paymentRetries, stdout).toBeGreaterThan(0)
    expect(s.patterns.redeliveriesAbsorbed, stdout).toBeGreaterThanOrEqual(s.patterns.acksLost)
    expect(stdout).toMatch(/replies \/ email acknowledgements lost \(chaos\) +[1-9]\d* \/ [1-9]/)
  }, 120_000)
})
