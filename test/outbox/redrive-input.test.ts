// redrive's event ids on real SQLite and PostgreSQL: an id no event can have (empty, or holding
// NUL or a lone surrogate, which PostgreSQL text cannot store) was sent to the database as it
// was, and PostgreSQL answered with a bare driver error ("invalid byte sequence for encoding
// UTF8: 0x00") naming neither the argument nor the id. It is refused before any statement, with
// INVALID_OPTION naming the argument and its position.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { outboxCommand } from '../../src/cli/outbox.js'
import { InvalidOptionError } from '../../src/core/errors.js'
import { redrive } from '../../src/outbox/index.js'
import { dbTargets, type OutboxDb } from './support.js'

describe.each(dbTargets)('redrive given an id no event can have, on $dialect', (target) => {
  let t: OutboxDb

  beforeAll(async () => {
    t = await target.open('redrive_input')
  })
  afterAll(async () => {
    await t?.close()
  })

  it.each([
    ['a NUL', 'bad\u0000id'],
    ['a lone surrogate', 'bad\ud800'],
    ['nothing', ''],
  ])('refuses an id holding %s with INVALID_OPTION naming eventIds[i]', async (_what, id) => {
    const error = await redrive(t.db, ['fine-id', id]).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ code: 'INVALID_OPTION', option: 'eventIds[1]' })
    // The database is still usable: nothing was sent.
    expect(await redrive(t.db, ['fine-id'])).toBe(0)
  })

  it('breakwater outbox redrive names --id (usage error, exit 2)', async () => {
    let stderr = ''
    const code = await outboxCommand(['redrive', '--db', t.url, '--id', 'bad\u0000id'], {
      stdout: { write: () => true },
      stderr: {
        write: (text: string) => {
          stderr += text
          return true
        },
      },
    })
    expect(code).toBe(2)
    expect(stderr).toMatch(/--id/)
    expect(stderr).not.toMatch(/invalid byte sequence/)
  })
})
