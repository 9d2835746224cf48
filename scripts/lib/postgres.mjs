// A throwaway PostgreSQL server: initdb into a fresh temporary folder, start on a free loopback
// port with fsync on, stop and delete the folder afterwards. Used by scripts/services.mjs and,
// through it, by the test suite's global setup.
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { freePort, ServiceError } from './common.mjs'

/** Where Debian puts each PostgreSQL major's binaries. */
const debianRoot = '/usr/lib/postgresql'

/** Finds the directory holding initdb and pg_ctl (newest Debian major first, then PATH). */
export function findPostgresBin() {
  if (existsSync(debianRoot)) {
    const majors = readdirSync(debianRoot)
      .filter((name) => /^\d+$/.test(name))
      .sort((a, b) => Number(b) - Number(a))
    for (const major of majors) {
      const bin = join(debianRoot, major, 'bin')
      if (existsSync(join(bin, 'initdb')) && existsSync(join(bin, 'pg_ctl'))) return bin
    }
  }
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir !== '' && existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'pg_ctl'))) return dir
  }
  return undefined
}

function isRoot() {
  return typeof process.getuid === 'function' && process.getuid() === 0
}

/** Installs Debian's postgresql package when we are root; otherwise explains what to install. */
export function ensurePostgresInstalled(log = (line) => process.stderr.write(`${line}\n`)) {
  let bin = findPostgresBin()
  if (bin !== undefined) return bin
  if (!isRoot() || !existsSync('/usr/bin/apt-get')) {
    throw new ServiceError(
      'PostgreSQL is not installed (no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH). ' +
        'Install it, e.g. `sudo apt-get install -y postgresql` on Debian/Ubuntu, then try again.',
    )
  }
  log('PostgreSQL not found: installing the Debian package (apt-get install -y postgresql)...')
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  for (const args of [['update'], ['install', '-y', '--no-install-recommends', 'postgresql']]) {
    const result = spawnSync('apt-get', args, { stdio: ['ignore', 'inherit', 'inherit'], env })
    if (result.status !== 0) {
      throw new ServiceError(`apt-get ${args.join(' ')} failed (exit ${result.status})`)
    }
  }
  bin = findPostgresBin()
  if (bin === undefined) throw new ServiceError('apt-get installed postgresql but no initdb found')
  return bin
}

/**
 * initdb refuses to run as root, so as root the server runs as the `postgres` OS user (created by
 * Debian's package); otherwise as ourselves.
 */
function serverUser() {
  if (!isRoot()) return undefined
  try {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim())
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim())
    return { uid, gid }
  } catch {
    throw new ServiceError(
      'Running as root but there is no `postgres` OS user to run PostgreSQL as (initdb refuses root). ' +
        'Create one (`useradd --system postgres`) or run as a non-root user.',
    )
  }
}

function run(command, args, user, what) {
  const options = { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }
  if (user !== undefined) Object.assign(options, user)
  const result = spawnSync(command, args, options)
  if (result.status !== 0) {
    const output = `${result.stdout ?? ''}${result.stderr ?? ''}`.trim()
    throw new ServiceError(`${what} failed (exit ${result.status}): ${output || result.error}`)
  }
  return result.stdout
}

/**
 * Starts a fresh PostgreSQL. Returns `{ url, port, root, bin, user, stop() }`; `stop()` stops the
 * server and deletes its folder. With `watchPid`, a small detached watchdog does the same if that
 * process dies without calling stop (a test runner killed with SIGKILL).
 */
export async function startPostgres(options = {}) {
  const bin = ensurePostgresInstalled(options.log)
  const user = serverUser()
  const root = mkdtempSync(join(options.tmpRoot ?? tmpdir(), 'breakwater-pg-'))
  if (user !== undefined) chownSync(root, user.uid, user.gid)
  const data = join(root, 'data')
  const password = randomBytes(18).toString('base64url')
  const pwfile = join(root, 'pwfile')
  writeFileSync(pwfile, `${password}\n`, { mode: 0o600 })
  if (user !== undefined) chownSync(pwfile, user.uid, user.gid)
  try {
    run(
      join(bin, 'initdb'),
      [
        '-D',
        data,
        '-U',
        'postgres',
        `--pwfile=${pwfile}`,
        '--auth-local=trust',
        '--auth-host=scram-sha-256',
        '-E',
        'UTF8',
        '--locale=C',
        '--no-instructions',
      ],
      user,
      'initdb',
    )
    rmSync(pwfile)
    let port
    let lastError
    // A free port can be taken between probing and binding; try a few.
    for (let attempt = 0; attempt < 5; attempt++) {
      port = await freePort()
      const serverOptions = [
        '-c listen_addresses=127.0.0.1',
        `-p ${port}`,
        `-k ${root}`,
        '-c fsync=on',
        '-c max_connections=300',
      ].join(' ')
      try {
        run(
          join(bin, 'pg_ctl'),
          [
            '-D',
            data,
            '-l',
            join(root, 'server.log'),
            '-w',
            '-t',
            '60',
            '-o',
            serverOptions,
            'start',
          ],
          user,
          'pg_ctl start',
        )
        lastError = undefined
        break
      } catch (error) {
        lastError = error
      }
    }
    if (lastError !== undefined) throw lastError
    const url = `postgres://postgres:${password}@127.0.0.1:${port}/postgres`
    const state = { service: 'postgres', url, port, root, bin, user: user ?? null }
    let watchdog
    if (options.watchPid !== undefined) watchdog = startWatchdog(options.watchPid, state)
    return {
      ...state,
      async stop() {
        if (watchdog !== undefined) {
          try {
            process.kill(watchdog.pid, 'SIGTERM')
          } catch {}
        }
        stopPostgres(state)
      },
    }
  } catch (error) {
    rmSync(root, { recursive: true, force: true })
    throw error
  }
}

/** Stops a server described by the state `startPostgres` returned, and deletes its folder. */
export function stopPostgres(state) {
  const pgCtl = join(state.bin, 'pg_ctl')
  const data = join(state.root, 'data')
  if (existsSync(join(data, 'postmaster.pid'))) {
    const user = state.user ?? undefined
    try {
      run(pgCtl, ['-D', data, '-m', 'fast', '-w', '-t', '30', 'stop'], user, 'pg_ctl stop')
    } catch {
      run(pgCtl, ['-D', data, '-m', 'immediate', '-w', 'stop'], user, 'pg_ctl stop (immediate)')
    }
  }
  rmSync(state.root, { recursive: true, force: true })
}

function startWatchdog(pid, state) {
  const script = new URL('./watchdog.mjs', import.meta.url)
  // The state (with the URL's password) goes through the environment, which unlike argv is not
  // readable by other users in `ps`.
  const child = spawn(process.execPath, [script.pathname, String(pid)], {
    detached: true,
    stdio: 'ignore',
    env: { ...process.env, BREAKWATER_WATCHDOG_STATE: JSON.stringify(state) },
  })
  child.unref()
  return child
}
