// Ends the session of an open transaction from a second connection, as an administrator's
// pg_terminate_backend or a server restart does, and returns once the transaction's client has
// seen it: its next statement (or COMMIT) then fails with pg's "not queryable" error.
import type pg from 'pg'
import type { SqlExecutor } from '../../src/stores/index.js'
import { until } from './until.js'

/**
 * Terminates the backend running `tx` through `admin` (another connection to the same server)
 * and waits until the backend has exited. One more round trip on `admin` follows: the server's
 * FATAL already waits in the transaction's socket, and pg reads it in that turn of the event
 * loop, marking its client lost (no real-time sleep).
 */
export async function terminateSessionOf(tx: SqlExecutor, admin: pg.Client): Promise<void> {
  const [row] = await tx.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')
  const pid = row!.pid
  await admin.query('SELECT pg_terminate_backend($1)', [pid])
  await until(
    async () =>
      (await admin.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid])).rowCount === 0,
    'the terminated backend to exit',
  )
  await admin.query('SELECT 1')
}
