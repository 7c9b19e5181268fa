/* The one mutex the library needs (program cache, log), over the platform's own. */
#ifndef EFL_MUTEX_H
#define EFL_MUTEX_H

#ifdef _WIN32
#include <windows.h>
typedef SRWLOCK efl_mutex;
static inline int efl_mutex_init(efl_mutex *m) { InitializeSRWLock(m); return 0; }
static inline void efl_mutex_destroy(efl_mutex *m) { (void)m; }
static inline void efl_mutex_lock(efl_mutex *m) { AcquireSRWLockExclusive(m); }
static inline void efl_mutex_unlock(efl_mutex *m) { ReleaseSRWLockExclusive(m); }
#else
#include <pthread.h>
typedef pthread_mutex_t efl_mutex;
static inline int efl_mutex_init(efl_mutex *m) { return pthread_mutex_init(m, NULL); }
static inline void efl_mutex_destroy(efl_mutex *m) { pthread_mutex_destroy(m); }
static inline void efl_mutex_lock(efl_mutex *m) { pthread_mutex_lock(m); }
static inline void efl_mutex_unlock(efl_mutex *m) { pthread_mutex_unlock(m); }
#endif

#endif
