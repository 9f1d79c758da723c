from twisted.application.service import ServiceMaker

cas = ServiceMaker("cas", "cas.tap", "A cas storage node.", "cas")
