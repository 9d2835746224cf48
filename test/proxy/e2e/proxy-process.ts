// Runs the real `breakwater proxy` command as the package ships it: node dist/cli/main.js.
// The build is refreshed first when a source file is newer than it (tsc emits even while
// other parts of the tree have type errors; the build's own exit code is not ours to judge).
import { execFileSync } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { type CliProcess, spawnNode } from '../../process/cli-process.js'
import { freeLoopbackPort } from '../../support/loopback.js'
import { eventually, http } from '../runtime/helpers.js'

const root = fileURLToPath(new URL('../../../', import.meta.url))
const mainJs = join(root, 'dist/cli/main.js')

function newestMtime(dir: string): number {
  let newest = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) newest = Math.max(newest, newestMtime(path))
    else if (entry.name.endsWith('.ts')) newest = Math.max(newest, statSync(path).mtimeMs)
  }
  return newest
}

/** Builds dist/ when it is missing or older than any source file. */
export function ensureBuilt(): void {
  const sources = newestMtime(join(root, 'src'))
  const built = [mainJs, join(root, 'dist/proxy/runtime.js'), join(root, 'dist/cli/proxy.js')]
  if (built.every((file) => existsSync(file) && statSync(file).mtimeMs >= sources)) return
  try {
    execFileSync(
      process.execPath,
      [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'],
      {
        cwd: root,
        stdio: 'pipe',
      },
    )
  } catch {
    // Type errors elsewhere in the tree still emit; the check below is what matters.
  }
  for (const file of built)
    if (!existsSync(file)) throw new Error(`npm run build did not produce ${file}`)
}

/** A free TCP port on 127.0.0.1 (bound and released; the proxy binds it right after). */
export function freePort(): Promise<number> {
  return freeLoopbackPort()
}

/** A running `breakwater proxy` process. */
export type ProxyProcess = CliProcess

/** Starts `breakwater ...args` from dist/ with `env` added. */
export function spawnProxy(
  args: readonly string[],
  env: Record<string, string> = {},
): ProxyProcess {
  return spawnNode([mainJs, ...args], env)
}

/** Waits until the proxy's admin listener on `adminPort` answers /readyz with 200. */
export async function waitForReady(proxy: ProxyProcess, adminPort: number): Promise<void> {
  await eventually(
    async () => {
      if (proxy.child.exitCode !== null)
        throw new Error(`proxy exited:\n${proxy.stdout()}\n${proxy.stderr()}`)
      return (await http(adminPort, '/readyz').catch(() => ({ status: 0 }))).status === 200
    },
    'readyz 200',
    30_000,
  )
}

/** Runs `breakwater ...args` to the end. */
export async function runProxyCli(
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const cli = spawnProxy(args, env)
  const { code } = await cli.exited
  return { code, stdout: cli.stdout(), stderr: cli.stderr() }
}
