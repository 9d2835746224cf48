// The dashboard in a real headless Chromium (Debian's package, driven by playwright-core): it
// loads, shows live data, and a chaos control (take payments down) changes the payments
// breaker on screen, open and then closed again once payments is back; a refused chaos action
// shows its error on the page.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type BrowserContext, chromium } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ensureChromium } from '../../../scripts/lib/chromium.mjs'
import { type DemoRun, dashboardOf, ensureShopBuilt, startDemo } from './support.js'

let browser: BrowserContext | undefined
let profile: string
let run: DemoRun | undefined

beforeAll(async () => {
  ensureShopBuilt()
  const executablePath = ensureChromium()
  profile = mkdtempSync(join(tmpdir(), 'breakwater-chromium-'))
  // A fresh profile per run: nothing cached from an earlier run can make the page look live.
  browser = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  })
}, 120_000)

afterAll(async () => {
  run?.stop()
  await run?.done
  await browser?.close()
  if (profile !== undefined) rmSync(profile, { recursive: true, force: true })
})

const numberIn = async (text: Promise<string | null>): Promise<number> =>
  Number((await text)?.replace(/[^0-9]/g, '') ?? Number.NaN)

describe('the shop dashboard in Chromium', () => {
  it('loads, shows live data, and taking payments down opens its breaker on screen', async () => {
    run = startDemo(['--duration', '0', '--chaos', 'none', '--rate', '5'])
    const url = await dashboardOf(run)
    const page = await browser!.newPage()
    await page.goto(url)
    await expect.poll(() => page.title()).toBe('breakwater shop')

    // Live: the orders counted from the databases go up while we watch.
    const orders = page.locator('#orders-total b')
    await orders.waitFor({ timeout: 15_000 })
    await expect.poll(() => numberIn(orders.textContent()), { timeout: 15_000 }).toBeGreaterThan(0)
    const before = await numberIn(orders.textContent())
    await expect
      .poll(() => numberIn(orders.textContent()), { timeout: 15_000 })
      .toBeGreaterThan(before)
    await expect
      .poll(() => page.locator('[data-invariant="duplicate charges"]').getAttribute('data-ok'))
      .toBe('true')

    // Any saga's timeline, read from the saga tables: its steps in order.
    const saga = page.locator('[data-saga-status="completed"]').first()
    const sagaId = await saga.getAttribute('data-saga')
    await saga.click()
    await expect.poll(() => page.locator('#timeline').textContent()).toContain(String(sagaId))
    await expect
      .poll(() => page.locator('#timeline').textContent())
      .toMatch(/accept[\s\S]*reserve[\s\S]*charge[\s\S]*ship/)

    // The proxy's breaker in front of payments, closed while payments answers.
    const breaker = page.locator('[data-breaker="proxy:payments"]')
    await expect.poll(() => breaker.getAttribute('data-state'), { timeout: 10_000 }).toBe('closed')

    await page.locator('[data-testid="down-payments"]').click()
    await expect
      .poll(() => page.locator('[data-process="payments"] td:nth-child(2)').textContent(), {
        timeout: 10_000,
      })
      .toBe('DOWN')
    await expect.poll(() => breaker.getAttribute('data-state'), { timeout: 20_000 }).toBe('open')
    await expect.poll(() => breaker.locator('.state-open').isVisible()).toBe(true)
    await expect
      .poll(() => page.locator('#transitions').textContent())
      .toMatch(/payments: closed → open/)

    // Back up: after its cooldown the breaker lets a probe through and closes again.
    await page.locator('[data-testid="up-payments"]').click()
    await expect.poll(() => breaker.getAttribute('data-state'), { timeout: 30_000 }).toBe('closed')

    // The strangler's controls move the proxy's /orders route, and roll it back.
    await page.locator('button[data-action*="\\"percent\\":90"]').click()
    await expect.poll(() => page.locator('#share').textContent()).toBe('90')
    await expect
      .poll(() => page.locator('#routes tbody tr').first().textContent())
      .toMatch(/legacy 10, orders 90/)
    await page.locator('#rollback').click()
    await expect
      .poll(() => page.locator('#routes tbody tr').first().textContent())
      .toMatch(/legacy 100, orders 0/)

    // A refused action is not silent: the page shows the server's error text, and clears it
    // once an action succeeds. (Every button of the page posts a valid action, so the refused
    // one is added here; the page handles every button's answer the same way.)
    const error = page.locator('#chaos-error')
    const refused = JSON.stringify({ kind: 'slow', target: 'payments', latencyMs: -1 })
    await page
      .locator('body')
      .evaluate(
        (body, action) =>
          body.insertAdjacentHTML(
            'beforeend',
            `<button id="refused" data-action='${action}'>refused</button>`,
          ),
        refused,
      )
    await page.locator('#refused').click()
    await expect.poll(() => error.isVisible(), { timeout: 15_000 }).toBe(true)
    expect(await error.textContent()).toMatch(/slow needs "latencyMs"/)
    await page.locator('[data-testid="calm-payments"]').click()
    await expect.poll(() => error.isVisible(), { timeout: 15_000 }).toBe(false)

    // Stopping the demo settles the system and judges it: every invariant held.
    run.stop()
    const { code, summary, stdout } = await run.done
    expect(summary?.ok, stdout).toBe(true)
    expect(code).toBe(0)
  }, 120_000)
})
