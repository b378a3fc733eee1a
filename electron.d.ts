// Types of `require('backend-process-manager/electron')` (docs/api.md, "Quitting and updating").
import type { EventEmitter } from 'node:events'
import type { BackendGroup, ProcessManager } from './index'

/** What `manage()` uses of Electron's `app`. */
export interface ElectronApp {
  on(event: 'before-quit', listener: (event: { preventDefault(): void }) => void): unknown
  on(event: 'will-quit', listener: (event: { preventDefault(): void }) => void): unknown
  removeListener(event: string, listener: (...args: any[]) => void): unknown
  quit(): void
}

export interface ManageOptions {
  /** A splash `BrowserWindow`: closed on the first `ready`. */
  splash?: { close(): void; isDestroyed?(): boolean }
  /** Electron's `dialog`: `failed` and `start-failed` show `dialog.showErrorBox(title, content)` (none once the app quits). */
  dialog?: { showErrorBox(title: string, content: string): void }
  /** Electron's `autoUpdater`: `before-quit-for-update` stops the backends first (synchronously). */
  autoUpdater?: Pick<EventEmitter, 'on' | 'removeListener'>
  /** Electron's `powerMonitor`: `shutdown` stops the backends synchronously. */
  powerMonitor?: Pick<EventEmitter, 'on' | 'removeListener'>
}

/**
 * Wires Electron's quit, update and error conventions for one manager or group: the first `before-quit` waits
 * for the stop (bounded by the largest `stopTimeoutMs` plus 1 s), then quits; `will-quit` (and `powerMonitor`'s
 * `shutdown`) stop synchronously. Only the objects passed in are used.
 */
export declare function manage(app: ElectronApp, target: ProcessManager | BackendGroup, options?: ManageOptions): { dispose(): void }
