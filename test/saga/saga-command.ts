// `breakwater saga <args> --db <the test database>` in-process, with what it printed.
import { sagaCommand } from '../../src/cli/saga.js'
import type { TestDb } from './databases.js'

/** Runs `breakwater saga <args> --db <t>`; resolves to its exit code and output. */
export async function runSagaCommand(
  t: TestDb,
  args: readonly string[],
): Promise<{ code: number; out: string; err: string }> {
  let out = ''
  let err = ''
  const code = await sagaCommand([...args, '--db', t.url], {
    stdout: { write: (text: string) => (out += text) },
    stderr: { write: (text: string) => (err += text) },
  })
  return { code, out, err }
}
