"""chat2audio: role-played characters answering in their own voice, over HTTP."""
