// Two shop demos on one PostgreSQL database (found by exploratory testing: a second
// `demo --db <same url>` while the first ran): the second replaced the shop_* schemas under the
// first one's services. Its DROP SCHEMA ... CASCADE waited on their locks and mostly ended in
// "replacing the stores' schemas failed: deadlock detected", a message that named no cause;
// when it got the locks, the first run's tables were gone mid-run. A demo now holds the
// database for its whole run, and a second one is refused before it touches anything.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createTestDatabase, type TestDatabase } from '../../support/postgres.js'
import { dashboardOf, ensureShopBuilt, invariantsOf, startDemo } from './support.js'

let database: TestDatabase

beforeAll(async () => {
  ensureShopBuilt()
  database = await createTestDatabase('shop_one_demo')
})

afterAll(async () => {
  await database?.drop()
})

const args = (): string[] => ['--db', database.url, '--duration', '0', '--chaos', 'none']

describe('the shop demo on a PostgreSQL database another demo runs on', () => {
  it('is refused, saying so, and the running one goes on untouched', async () => {
    const first = startDemo([...args(), '--rate', '5'])
    try {
      await dashboardOf(first)
      const second = await startDemo(args()).done
      expect(second.code, `${second.stdout}\n${second.stderr}`).toBe(1)
      expect(second.stderr).toMatch(
        /another shop demo is running on this database .*wait for it to end, or give --db another database/,
      )
      expect(second.stdout).not.toMatch(/^dashboard:/m)
    } finally {
      // Awaited here too: a failed expectation must not leave the first demo running.
      first.stop()
      await first.done
    }
    const { code, stdout, stderr, summary } = await first.done
    expect(code, `${stdout}\n${stderr}`).toBe(0)
    expect(summary?.ok, stdout).toBe(true)
    expect(Object.values(invariantsOf(summary!))).not.toContain(false)
    // Once the first one has ended, the database is free again.
    const next = startDemo(args())
    await dashboardOf(next)
    next.stop()
    expect((await next.done).code).toBe(0)
  }, 180_000)
})
