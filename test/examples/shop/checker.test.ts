// The invariant checker proves nothing unless it fails on a broken system. With the payments
// idempotency switched off (`--break payments-idempotency`) and payments losing half of its
// replies after charging, the retries charge twice: the checker must count the duplicates from
// the payments database and the demo must exit 1. The same run with every safety net on is the
// control: the same lost replies and lost acknowledgements happen (retries, redeliveries), and
// nothing is charged or sent twice. checker-inbox.test.ts breaks the inbox.
import { beforeAll, describe, expect, it } from 'vitest'
import { ensureShopBuilt, invariantsOf, startDemo } from './support.js'

beforeAll(() => {
  ensureShopBuilt()
})

const args = ['--duration', '8', '--chaos', 'lost-replies', '--rate', '6', '--quiet']

describe('the shop demo invariant checker', () => {
  it('reports duplicate charges and exits 1 when payments idempotency is switched off', async () => {
    const { code, stdout, summary } = await startDemo([...args, '--break', 'payments-idempotency'])
      .done
    expect(summary, stdout).toBeDefined()
    expect(summary!.figures.duplicateCharges, stdout).toBeGreaterThan(0)
    expect(invariantsOf(summary!)['duplicate charges']).toBe(false)
    expect(summary!.ok).toBe(false)
    expect(stdout).toMatch(/duplicate charges +\d+ +0 +BROKEN/)
    expect(stdout).toMatch(/INVARIANTS BROKEN/)
    expect(code).toBe(1)
  }, 90_000)

  it('finds none under the same faults with every safety net on', async () => {
    const { code, stdout, summary } = await startDemo(args).done
    expect(summary, stdout).toBeDefined()
    const s = summary!
    expect(s.figures.duplicateCharges).toBe(0)
    expect(s.figures.emails.duplicated).toBe(0)
    expect(s.ok, stdout).toBe(true)
    expect(code).toBe(0)
    // The faults did happen and were absorbed: charges retried with their key, messages
    // delivered again and recognised by the inbox.
    expect(s.patterns.paymentRetries, stdout).toBeGreaterThan(0)
    expect(s.patterns.redeliveriesAbsorbed, stdout).toBeGreaterThan(0)
  }, 90_000)
})
