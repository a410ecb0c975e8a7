"""The parallel streaming conversion: plan every output tensor from the mapping before a byte is read (plan),
bound the bytes in flight (budget), run rules on worker threads (execute), write each tensor once at its planned
place (sinks, through the small file functions of fileio), and across processes or hosts on Ray (distributed)."""
