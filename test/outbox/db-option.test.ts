// outbox.transaction and inboxHandler refuse, before anything runs, a db that is not a SQLite or
// PostgreSQL SqlDriver, naming `db`: a driver-shaped object of another dialect was taken, and
// the statements chosen by dialect failed later.
import { expect, it } from 'vitest'
import { InvalidOptionError } from '../../src/core/errors.js'
import { createOutbox, inboxHandler } from '../../src/outbox/index.js'

const driverShaped = (dialect?: string) => ({
  ...(dialect === undefined ? {} : { dialect }),
  transaction: async (fn: (tx: unknown) => unknown) => fn({}),
  query: async () => [],
  execute: async () => ({ rowCount: 0 }),
})

it.each([
  ['without dialect', driverShaped()],
  ['of another dialect', driverShaped('mysql')],
  ['a URL', 'sqlite:./app.db'],
])('refuses a db %s in outbox.transaction and inboxHandler', async (_what, db) => {
  const outbox = createOutbox()
  const ran: string[] = []
  await expect(
    outbox.transaction(db as never, async () => {
      ran.push('transaction')
    }),
  ).rejects.toMatchObject({ constructor: InvalidOptionError, option: 'db' })
  expect(() =>
    inboxHandler(db as never, 'payments', async () => {
      ran.push('handler')
    }),
  ).toThrow(expect.objectContaining({ option: 'db' }))
  expect(ran).toEqual([])
})
